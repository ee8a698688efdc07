-- lib/rates.lua: a scope's rate buckets, all in one string key.
--
-- The value lists each dimension as ten space-separated tokens:
--   <name> <level> <rem> <rem_den> <ts> <cap> <cap_seen> <num> <den> <rate_seen>
-- level, rem, rem_den, ts: the bucket (lib/bucket.lua), in micro-units,
-- refilled at num/den micro-units per microsecond up to cap micro-units. cap and num/den
-- are what Redis enforces: each is the strictest any process has asked for
-- within HOLD_US, and cap_seen / rate_seen are when a process last asked for
-- it. A process asking for more (a larger capacity, a faster rate) while a
-- stricter setting is held gets the stricter one; both sides get a
-- "conflict" event naming what applies, so processes that disagree never
-- flip-flop silently. Once nobody has asked for the stricter setting for
-- HOLD_US, the next caller's own applies.
-- A bucket never charged, or full when its key expired, is full at any
-- capacity: it is written with ts 0. The key expires (or is deleted) when
-- every bucket would be full again: a missing key is full buckets, so a
-- permit never settled leaves nothing.

local HOLD_US = 60 * 1000000

-- The setting that applies: the caller's own, unless another process holds
-- a stricter one (asked for within HOLD_US). The third result tells whether
-- the two disagree while both are in use.
local function held(own, kept, seen, now, stricter, same)
  if kept == nil or same(own, kept) then return own, now, false end
  if now - seen > HOLD_US then return own, now, false end
  if stricter(own, kept) then return own, now, true end
  return kept, seen, true
end

local function smaller(a, b) return a < b end
local function equal(a, b) return a == b end
local function slower(a, b) return a[1] / a[2] < b[1] / b[2] end
local function same_rate(a, b) return a[1] == b[1] and a[2] == b[2] end

-- Read the scope's buckets: sets each dimension's cur ({level, rem, den, ts},
-- nil = full) and the cap, num, den that apply now; conflicts go to `events`.
local function read_rates(scope, now, events)
  local raw = redis.call('GET', scope.rates_key)
  local stored = {}
  scope.others = {}
  if raw then
    for name, level, rem, rem_den, ts, cap, cs, num, den, rs in string.gmatch(raw,
      '(%S+) (-?%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)') do
      stored[name] = { tonumber(level), tonumber(rem), tonumber(ts), tonumber(cap),
        tonumber(cs), tonumber(num), tonumber(den), tonumber(rs), tonumber(rem_den) }
    end
  end
  local mine = {}
  for _, d in ipairs(scope.rates) do
    mine[d.name] = true
    local s = stored[d.name]
    if s then
      local cap_differs, rate_differs, rate
      d.cap, d.cap_seen, cap_differs = held(d.cap, s[4], s[5], now, smaller, equal)
      rate, d.rate_seen, rate_differs = held({ d.num, d.den }, { s[6], s[7] }, s[8], now, slower,
        same_rate)
      d.num, d.den = rate[1], rate[2]
      if cap_differs or rate_differs then
        events[#events + 1] = { 'conflict', scope.j, d.name, d.cap, d.num, d.den }
      end
      if s[3] > 0 then d.cur = { s[1], s[2], s[9], s[3] } end
    else
      d.cur, d.cap_seen, d.rate_seen = nil, now, now
    end
  end
  -- Dimensions other processes have and this one does not: kept as they are.
  for name, s in pairs(stored) do
    if not mine[name] then scope.others[#scope.others + 1] = { name, s } end
  end
end

-- Write the scope's buckets back, to expire when every one is full again
-- (deleted at once when they all are).
local function write_rates(scope, now)
  local parts, full_at = {}, now
  local function add(name, cur, cap, cs, num, den, rs)
    -- A bucket is stored as it is (a remainder of another rate kept with its
    -- denominator): read back, it means what it meant.
    local level, rem, rem_den, ts = cap, 0, den, 0
    if cur then
      level, rem, rem_den, ts = cur[1], cur[2], cur[3], cur[4]
      local r = rem
      if rem_den ~= den then r = 0 end
      full_at = math.max(full_at, ts + wait_for(math.min(level, cap), r, cap, num, den))
    end
    parts[#parts + 1] = string.format('%s %d %d %d %d %d %d %d %d %d', name, level, rem, rem_den,
      ts, cap, cs, num, den, rs)
  end
  for _, d in ipairs(scope.rates) do add(d.name, d.cur, d.cap, d.cap_seen, d.num, d.den, d.rate_seen) end
  for _, o in ipairs(scope.others) do
    local s = o[2]
    local cur = nil
    if s[3] > 0 then cur = { s[1], s[2], s[9], s[3] } end
    add(o[1], cur, s[4], s[5], s[6], s[7], s[8])
  end
  if full_at <= now then
    redis.call('DEL', scope.rates_key)
  else
    redis.call('SET', scope.rates_key, table.concat(parts, ' '), 'PX',
      math.ceil((full_at - now) / 1000) + 1)
  end
end
