-- settle.lua: turn a permit's reservation into its actual cost, once.
--
-- KEYS[1]  permits hash (as in acquire.lua)
-- KEYS[2]  leases sorted set (as in acquire.lua)
-- KEYS[3..] state hashes, one per scope
-- ARGV[1]  permit id
-- ARGV[2]  n: number of dimensions that follow, 6 arguments each:
--          k (index into KEYS), dim name, cap, num, den (as in acquire.lua),
--          actual (micro-units actually used; -1 = keep what was reserved)
-- Reply    {status, now_us}: status 1 = settled: each bucket got back
--          reserved - actual (capped at its capacity) or, when actual is
--          larger, was debited the difference (it may go into debt, so later
--          callers wait); 0 = unknown permit (already settled or cancelled,
--          from this process or another, or its lease ended first: the
--          reservation stays spent): nothing changed.
-- A cancel is a settle with every actual = 0, also for a booking still in line.

local permits, leases = KEYS[1], KEYS[2]
local id = ARGV[1]
local n = tonumber(ARGV[2])
local now = now_us()

local record = redis.call('HGET', permits, id)
if not record then return { 0, now } end
redis.call('HDEL', permits, id)
local lease_end = tonumber(redis.call('ZSCORE', leases, id))
redis.call('ZREM', leases, id)
if lease_end and lease_end < now then return { 0, now } end

local reserved = {}
for dim, cost in string.gmatch(record, ' (%d+:[%w_]+):(%d+)') do
  reserved[dim] = tonumber(cost)
end

for i = 0, n - 1 do
  local b = 3 + 6 * i
  local key = KEYS[tonumber(ARGV[b])]
  local name = ARGV[b + 1]
  local cap, num, den = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local actual = tonumber(ARGV[b + 5])
  local back = actual >= 0 and (reserved[ARGV[b] .. ':' .. name] or 0) - actual or 0
  if back ~= 0 then
    local level, rem = refill(decode(redis.call('HGET', key, name)), cap, num, den, now)
    level = level + back
    if level >= cap then level, rem = cap, 0 end
    redis.call('HSET', key, name, encode(level, rem, den, now))
    extend_ttl(key, wait_for(level, rem, cap, num, den) / 1000 + 1)
  end
end
return { 1, now }
