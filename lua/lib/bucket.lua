-- lib/bucket.lua: one rate dimension's token bucket, in exact integers.
--
-- A dimension's bucket is one field of the scope's state hash:
--   field = dimension name
--   value = "<level> <rem> <den> <ts>" (decimal integers)
--     level  micro-units in the bucket at time ts, after every admission
--            booked up to ts (negative only for debt: a settle that used more
--            than it reserved, or a provider's retry-after)
--     rem    fraction of one micro-unit already refilled, in 1/den steps
--     den    the rate's denominator when rem was written (a new rate resets rem)
--     ts     microseconds since the epoch (Redis TIME): the last write, or,
--            while callers are booked ahead ("waiting is booked, not polled"),
--            the admission time of the last of them: the bucket is then known
--            as of that future instant, and nobody can be admitted before it
-- The refill rate is num/den micro-units per microsecond, an exact fraction
-- with num*den < 2^50, so every product below stays an exact double
-- (integers below 2^53). A missing field is a full bucket, which is also why
-- the hash may expire once every bucket in it would be full again.

-- "level rem den ts" -> table, or nil for an absent bucket.
local function decode(raw)
  if not raw then return nil end
  local level, rem, den, ts = string.match(raw, '^(-?%d+) (%d+) (%d+) (%d+)$')
  return { tonumber(level), tonumber(rem), tonumber(den), tonumber(ts) }
end

local function encode(level, rem, den, ts)
  return string.format('%d %d %d %d', level, rem, den, ts)
end

-- Level and remainder of a bucket refilled up to `now`, capped at `cap`.
local function refill(cur, cap, num, den, now)
  if not cur then return cap, 0 end
  local level, rem, ts = cur[1], cur[2], cur[4]
  if cur[3] ~= den then rem = 0 end
  if level >= cap then return cap, 0 end
  local elapsed = now - ts
  if elapsed <= 0 then return level, rem end
  -- Long idle: full for sure (the bound has a margin of one whole den, far
  -- above the rounding of this one division).
  if elapsed >= (cap - level) / num * den + den then return cap, 0 end
  -- gained = floor((elapsed * num + rem) / den), split so no product passes 2^53.
  local q = math.floor(elapsed / den)
  local r = elapsed - q * den
  local t = r * num + rem
  local carry = math.floor(t / den)
  level = level + q * num + carry
  rem = t - carry * den
  if level >= cap then return cap, 0 end
  return level, rem
end

-- The bucket as of `at` = max(now, ts): level, rem, at (a missing bucket is full now).
local function bucket_at(cur, cap, num, den, now)
  if not cur then return cap, 0, now end
  if cur[4] > now then
    if cur[1] >= cap then return cap, 0, cur[4] end
    local rem = cur[2]
    if cur[3] ~= den then rem = 0 end
    return cur[1], rem, cur[4]
  end
  local level, rem = refill(cur, cap, num, den, now)
  return level, rem, now
end

-- Microseconds until a bucket at (level, rem) holds `need` micro-units,
-- rounded up (never early). Exact while (need - level) * den < 2^52; above
-- that the double result gets one extra microsecond of margin.
local function wait_for(level, rem, need, num, den)
  if level >= need then return 0 end
  local ticks = (need - level) * den - rem
  local w = math.ceil(ticks / num)
  if (need - level) * den >= 4503599627370496 then w = w + 1 end
  return w
end
