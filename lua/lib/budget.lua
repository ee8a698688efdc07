-- lib/budget.lua: a budget's state for its calendar period.
--
-- The budget is field "$<dim>" of the scope's state hash:
--   "<period_start_us> <spent> <reserved> <fired_ppm>" (nano-dollars;
--   fired_ppm = highest alert threshold reported this period, in parts per
--   million of the limit). A new period starts with nothing spent and no
--   alert fired; reservations in flight carry over.

-- The [start, end) and label of the period holding `now`, or nil when the
-- client sent boundaries around a different time (its clock is far off).
local function period_of(p, now)
  for i = 1, 3 do
    if p[i] <= now and now < p[i + 1] then return p[i], p[i + 1], p[i + 4] end
  end
  return nil
end

-- A budget's state for the period holding `now` (a new period starts with
-- nothing spent and no alert fired; reservations in flight carry over).
local function load_budget(scope, now)
  local b = scope.budget
  local start, stop, label = period_of(b.periods, now)
  if not start then return nil end
  local raw = redis.call('HGET', scope.state, '$' .. b.name)
  local st = { start = start, stop = stop, label = label, spent = 0, reserved = 0, fired = 0 }
  if raw then
    local p, spent, reserved, fired = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
    st.reserved = tonumber(reserved)
    if tonumber(p) == start then
      st.spent, st.fired = tonumber(spent), tonumber(fired)
    end
  end
  b.st = st
  return st
end

local function save_budget(scope, now, keep_until)
  local b, st = scope.budget, scope.budget.st
  redis.call('HSET', scope.state, '$' .. b.name,
    string.format('%d %d %d %d', st.start, st.spent, st.reserved, st.fired))
  local until_us = math.max(st.stop, keep_until or 0) + GRACE_US
  extend_ttl(scope.state, (until_us - now) / 1000)
end
