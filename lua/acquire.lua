-- acquire.lua: check and debit every dimension of one request together, or none.
--
-- KEYS[1]  permits hash: permit id -> "<admit_us> <k>:<dim>:<cost_micro> ..."
-- KEYS[2]  leases sorted set: permit id scored by its lease end (microseconds)
-- KEYS[3..] state hashes, one per scope (see bucket.lua for the field format)
-- ARGV[1]  permit id (a fresh random string from the client)
-- ARGV[2]  max_wait_us: the longest the caller will wait, microseconds; -1 = no limit
-- ARGV[3]  lease_us: how long a permit stays settleable after its admission, microseconds
-- ARGV[4]  n: number of dimensions that follow, 6 arguments each:
--          k (index into KEYS of the dimension's state hash), dim name,
--          cap (capacity, micro-units), num, den (refill num/den micro-units per
--          microsecond), cost (micro-units, 0 <= cost <= cap)
-- Reply    {1, wait_us, now_us}: admitted; the caller sleeps wait_us, then goes
--          ahead without asking again (its place is booked: the buckets were
--          debited now and may be negative until the refill catches up).
--          {0, retry_after_us, now_us}: admission would come later than
--          max_wait_us; nothing was changed.
-- A retry with the same permit id (a reply lost to a timeout) returns the
-- first booking again instead of booking twice.

local permits, leases = KEYS[1], KEYS[2]
local id = ARGV[1]
local max_wait = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local now = now_us()

local booked = redis.call('HGET', permits, id)
if booked then
  local at = tonumber(string.match(booked, '^(%d+)'))
  return { 1, math.max(0, at - now), now }
end

-- Debt past this would leave the exact range of doubles; no real quota gets near.
local FLOOR = -2251799813685248

local dims = {}
local wait = 0
for i = 0, n - 1 do
  local b = 5 + 6 * i
  local d = {
    key = KEYS[tonumber(ARGV[b])], k = ARGV[b], name = ARGV[b + 1],
    cap = tonumber(ARGV[b + 2]), num = tonumber(ARGV[b + 3]),
    den = tonumber(ARGV[b + 4]), cost = tonumber(ARGV[b + 5]),
  }
  d.level, d.rem = refill(decode(redis.call('HGET', d.key, d.name)), d.cap, d.num, d.den, now)
  local w = wait_for(d.level, d.rem, d.cost, d.num, d.den)
  if w > wait then wait = w end
  if d.level - d.cost < FLOOR then wait = math.huge end
  dims[i + 1] = d
end

if wait == math.huge or (max_wait >= 0 and wait > max_wait) then
  if wait == math.huge then wait = -1 end
  return { 0, wait, now }
end

local record = { string.format('%.0f', now + wait) }
local full_in = {}
for _, d in ipairs(dims) do
  local level = d.level - d.cost
  redis.call('HSET', d.key, d.name, encode(level, d.rem, d.den, now))
  record[#record + 1] = d.k .. ':' .. d.name .. ':' .. string.format('%.0f', d.cost)
  local f = wait_for(level, d.rem, d.cap, d.num, d.den)
  if f > (full_in[d.key] or 0) then full_in[d.key] = f end
end
for key, us in pairs(full_in) do extend_ttl(key, us / 1000 + 1) end

-- Forget permits whose lease ended without a settle (a few per call keeps this
-- O(1) per call and the hash bounded); rate buckets keep what such a permit took.
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 8)
if #expired > 0 then
  redis.call('HDEL', permits, unpack(expired))
  redis.call('ZREM', leases, unpack(expired))
end

local lease_end = now + wait + lease
redis.call('HSET', permits, id, table.concat(record, ' '))
redis.call('ZADD', leases, lease_end, id)
local last = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')
local keep_ms = (tonumber(last[2]) - now) / 1000 + 1
extend_ttl(permits, keep_ms)
extend_ttl(leases, keep_ms)
return { 1, wait, now }
