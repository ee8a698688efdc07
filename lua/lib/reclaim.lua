-- lib/reclaim.lua: permits whose lease ended without a settle (a crashed
-- worker's) are reclaimed by whichever script call comes next.

-- At most this many permits are reclaimed per call: enough that a crashed
-- pool's 1,000 permits are gone within 16 calls, few enough that no call
-- does unbounded work (each reclaim is one ledger entry and a budget update).
local RECLAIM_BATCH = 64

-- Reclaim permits whose lease ended without a settle (no background
-- process; the caller has checked the budgets' periods). Their rate buckets keep what they took. Their budget reservation
-- is charged in full: a worker that died mid-call may well have been billed,
-- and charging the worst case can only keep spend under the limit.
local function reclaim_expired(scopes, now, out)
  local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, RECLAIM_BATCH)
  for _, id in ipairs(expired) do
    local record = redis.call('HGET', PERMITS, id)
    if record then
      local rec = decode_record(record)
      finish_permit(scopes, id, rec, function(_, reserved) return reserved end, 'reclaimed',
        rec.model, rec.tokens, rec.tags, now, out)
    end
    redis.call('HDEL', PERMITS, id)
    redis.call('ZREM', LEASES, id)
  end
end
