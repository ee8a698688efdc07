-- lib/budget.lua: a budget's state for its calendar period.
--
-- The budget key holds one string:
--   "<period_start_us> <period_end_us> <spent> <reserved> <fired_ppm> <limit> <label>"
-- (nano-dollars; fired_ppm = highest alert threshold reported this period,
-- in parts per million of the limit). A new period starts with nothing spent
-- and no alert fired; reservations in flight carry over. The key has no TTL:
-- an eviction policy that only takes keys with a TTL (volatile-*) never
-- takes a budget.
--
-- Spend never silently goes back to zero. When the key is gone (a restart
-- without persistence, an eviction, a flush) or holds less than a client has
-- already seen this period (its floor), the spend found is raised to what is
-- known: the floor, or, when the key is missing, the period's spend counters
-- if they survived. A "restored" event tells the client to log it.

-- The [start, end) and label of the period holding `now`, or nil when the
-- client sent boundaries around a different time (its clock is far off).
local function period_of(p, now)
  for i = 1, 3 do
    if p[i] <= now and now < p[i + 1] then return p[i], p[i + 1], p[i + 4] end
  end
  return nil
end

-- Whether every budget's periods and days hold `now`: checked before a
-- script writes anything, so that a client whose clock is far off (status
-- -2) changes nothing at all.
local function periods_hold(scopes, now)
  for _, scope in ipairs(scopes) do
    local b = scope.budget
    if b and not (period_of(b.periods, now) and period_of(b.days, now)) then return false end
  end
  return true
end

-- What the spend counters hold for the period labelled `label` (a day
-- "YYYY-MM-DD" or a month "YYYY-MM"), cache savings aside.
local function counted_spend(scope, label)
  local total, raw = 0, redis.call('HGETALL', scope.spend)
  for i = 1, #raw, 2 do
    local day, rest = string.match(raw[i], '^([^|]+)|(.*)$')
    if day and string.sub(day, 1, #label) == label and not string.find(rest, '|saved$') then
      total = total + tonumber(raw[i + 1])
    end
  end
  return total
end

-- A budget's state for the period holding `now`, or nil when the periods
-- sent do not hold it.
local function load_budget(scope, now, events)
  local b = scope.budget
  local start, stop, label = period_of(b.periods, now)
  if not start then return nil end
  local raw = redis.call('GET', scope.budget_key)
  local st = { start = start, stop = stop, label = label, spent = 0, reserved = 0, fired = 0 }
  local floor = 0
  if label == b.periods[6] then floor = b.floor end
  if raw then
    local p, spent, reserved, fired = string.match(raw, '^(%d+) %d+ (%d+) (%d+) (%d+)')
    st.reserved = tonumber(reserved)
    if tonumber(p) == start then st.spent, st.fired = tonumber(spent), tonumber(fired) end
  elseif b.count_days then
    floor = math.max(floor, counted_spend(scope, label))
  end
  if st.spent < floor then
    events[#events + 1] = { 'restored', scope.j, string.format('%d', st.spent),
      string.format('%d', floor) }
    st.spent = floor
  end
  b.st = st
  return st
end

local function save_budget(scope)
  local b, st = scope.budget, scope.budget.st
  redis.call('SET', scope.budget_key, string.format('%d %d %d %d %d %d %s', st.start, st.stop,
    st.spent, st.reserved, st.fired, b.limit, st.label))
end

-- {{j, period label, spent}, ...} for each budget this call loaded: the
-- client keeps the highest spend it has seen as its floor.
local function seen_spend(scopes)
  local seen = {}
  for _, scope in ipairs(scopes) do
    local st = scope.budget and scope.budget.st
    if st then seen[#seen + 1] = { scope.j, st.label, string.format('%d', st.spent) } end
  end
  return seen
end
