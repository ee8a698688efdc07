-- lib/book.lua: waiting is booked, not polled. A request is admitted at the
-- first instant every dimension it costs can pay, after everyone booked
-- before it on that dimension (first come, first served), and each of those
-- buckets is charged as of that instant.

-- The admission time of a request whose costs are each dimension's amount
-- (lib/rates.lua must have read the scopes' buckets).
local function admission_time(scopes, now)
  local admit = now
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(scope.rates) do
      if d.amount > 0 then
        local level, rem, at = bucket_at(d, now)
        local ready = at + wait_for(level, rem, d.amount, d.num, d.den)
        if ready > admit then admit = ready end
      end
    end
  end
  return admit
end

-- The wait until `admit`; or nil and the retry_after to report (-1 = never)
-- when that is later than max_wait (-1 = no limit).
local function wait_until(admit, now, max_wait)
  -- Bookings past this would leave the exact range of doubles; none gets near.
  if admit > 4503599627370496 then return nil, -1 end
  local wait = admit - now
  if max_wait >= 0 and wait > max_wait then return nil, wait end
  return wait
end

-- Charge each dimension its amount as of `admit` (refilled, up to capacity,
-- until then). Returns whether any bucket changed.
local function charge(scope, admit, now)
  local charged = false
  for _, d in ipairs(scope.rates) do
    if d.amount > 0 then
      local level, rem, at = bucket_at(d, now)
      level, rem = refill(d, level, rem, d.den, at, admit)
      set_bucket(d, level - d.amount, rem, admit)
      charged = true
    end
  end
  return charged
end
