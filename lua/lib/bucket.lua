-- lib/bucket.lua: one rate dimension's token bucket, in exact integers.
--
-- A dimension d (lib/args.lua) carries its bucket as written, and the rate
-- it is refilled at (lib/rates.lua):
--   d.level  micro-units in the bucket at time d.ts, after every admission
--            booked up to d.ts (negative only for debt: a settle that used
--            more than it reserved, or a provider's retry-after); nil for a
--            full bucket (never charged, or refilled when its key expired)
--   d.rem    fraction of one micro-unit already refilled, in 1/d.rden steps
--   d.rden   the rate's denominator when rem was written (a new rate resets rem)
--   d.ts     microseconds since the epoch (Redis TIME): the last write, or,
--            while callers are booked ahead ("waiting is booked, not polled"),
--            the admission time of the last of them: the bucket is then known
--            as of that future instant, and nobody can be admitted before it
--   d.cap, d.num, d.den  capacity and refill rate: num/den micro-units per
--            microsecond, an exact fraction with num*den < 2^50, so every
--            product below stays an exact double (integers below 2^53)

-- Level and remainder of a bucket (level, rem, rden, ts) refilled up to
-- `now` at d's rate, capped at its capacity.
local function refill(d, level, rem, rden, ts, now)
  local cap, num, den = d.cap, d.num, d.den
  if rden ~= den then rem = 0 end
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

-- The bucket as of `at` = max(now, ts): level, rem, at (a full bucket is full now).
local function bucket_at(d, now)
  local level, ts = d.level, d.ts
  if not level then return d.cap, 0, now end
  if ts > now then
    if level >= d.cap then return d.cap, 0, ts end
    if d.rden ~= d.den then return level, 0, ts end
    return level, d.rem, ts
  end
  level, ts = refill(d, level, d.rem, d.rden, ts, now)
  return level, ts, now
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

local function set_bucket(d, level, rem, ts)
  d.level, d.rem, d.rden, d.ts = level, rem, d.den, ts
end

-- Debt past this would leave the exact range of doubles; no real quota gets near.
local FLOOR = -2251799813685248

-- Give dimension d back `back` micro-units of a permit admitted at `admit`,
-- or charge it -back (a debt after everyone booked, so later callers wait).
-- Returns whether the bucket changed.
local function credit(d, back, admit, now)
  local level, rem, at = bucket_at(d, now)
  if back < 0 then
    level = math.max(level + back, FLOOR)
  elseif admit <= now or admit >= at then
    -- The call went out (its unused part comes back after everyone already
    -- booked, as the provider's own bucket gives back an unused
    -- reservation), or nobody is booked after it: credited.
    level = level + back
    if level >= d.cap then level, rem = d.cap, 0 end
  else
    -- A booking still in line with others booked after it: those were timed
    -- without its units, and handing them to a newcomer would squeeze it in
    -- just before them, more than the provider's bucket holds (that call
    -- never reached the provider to be given back). The slot stays spent.
    return false
  end
  set_bucket(d, level, rem, at)
  return true
end
