-- lib/ttl.lua: key lifetimes. Idle state expires by itself; a TTL is never
-- shortened, since another caller's part of the same key may need longer.

-- Keep a key alive at least `ms` more milliseconds, never shortening its TTL.
-- With `slack`, a TTL that must grow grows by that much more, so the calls
-- that follow (each needing a little longer) find it long enough and skip the
-- PEXPIRE.
local function extend_ttl(key, ms, slack)
  ms = math.ceil(ms)
  if ms < 1 then ms = 1 end
  local ttl = redis.call('PTTL', key)
  if ttl < ms then redis.call('PEXPIRE', key, ms + (slack or 0)) end
end
