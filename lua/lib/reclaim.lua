-- lib/reclaim.lua: permits whose lease ended without a settle (a crashed
-- worker's) are reclaimed by whichever script call comes next.

-- Reclaim a few permits whose lease ended without a settle (a few per call
-- keeps each call O(1) and the permits bounded; no background process).
-- Their rate buckets keep what they took. Their budget reservation is
-- charged in full: a worker that died mid-call may well have been billed,
-- and charging the worst case can only keep spend under the limit.
local function reclaim_expired(scopes, now, out)
  local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 8)
  for _, id in ipairs(expired) do
    local record = redis.call('HGET', PERMITS, id)
    if record then
      local rec = decode_record(record)
      if not finish_permit(scopes, id, rec, function(_, reserved) return reserved end,
        'reclaimed', rec.model, rec.tokens, rec.tags, now, out) then
        return false
      end
    end
    redis.call('HDEL', PERMITS, id)
    redis.call('ZREM', LEASES, id)
  end
  return true
end
