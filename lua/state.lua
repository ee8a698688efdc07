-- state.lua: read every dimension's level now, without changing anything.
--
-- KEYS[1..] state hashes, one per scope
-- ARGV[1]  n: number of dimensions that follow, 5 arguments each:
--          k (index into KEYS), dim name, cap, num, den (as in acquire.lua)
-- Reply    {now_us, level_1, ..., level_n}: micro-units in each bucket at
--          now_us, refilled and capped; negative while callers are booked ahead.

local n = tonumber(ARGV[1])
local now = now_us()
local reply = { now }
for i = 0, n - 1 do
  local b = 2 + 5 * i
  local raw = redis.call('HGET', KEYS[tonumber(ARGV[b])], ARGV[b + 1])
  local cap, num, den = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  reply[i + 2] = refill(decode(raw), cap, num, den, now)
end
return reply
