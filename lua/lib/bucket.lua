-- lib/bucket.lua: one rate dimension's token bucket, in exact integers.
--
-- A bucket is {level, rem, den, ts} (lib/rates.lua stores it):
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
-- (integers below 2^53). A missing bucket (nil) is a full one.

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

-- Debt past this would leave the exact range of doubles; no real quota gets near.
local FLOOR = -2251799813685248

-- Give a bucket back `back` micro-units of a permit admitted at `admit`, or
-- charge it -back (a debt after everyone booked, so later callers wait).
-- Returns the new bucket, or nil when nothing changes.
local function credit(cur, cap, num, den, back, admit, now)
  local level, rem, at = bucket_at(cur, cap, num, den, now)
  if back < 0 then
    level = math.max(level + back, FLOOR)
  elseif admit <= now or admit >= at then
    -- The call went out (its unused part comes back after everyone already
    -- booked, as the provider's own bucket gives back an unused
    -- reservation), or nobody is booked after it: credited.
    level = level + back
    if level >= cap then level, rem = cap, 0 end
  else
    -- A booking still in line with others booked after it: those were timed
    -- without its units, and handing them to a newcomer would squeeze it in
    -- just before them, more than the provider's bucket holds (that call
    -- never reached the provider to be given back). The slot stays spent.
    return nil
  end
  return { level, rem, den, at }
end
