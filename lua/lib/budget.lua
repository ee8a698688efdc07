-- lib/budget.lua: a budget's state for its calendar period.
--
-- The budget key holds one string:
--   "<period_start_us> <period_end_us> <spent> <reserved> <fired_ppm> <limit> <label> <lost_us>"
-- (nano-dollars; fired_ppm = highest alert threshold reported this period,
-- in parts per million of the limit; lost_us = when Redis was last found
-- to have lost this budget's spend, 0 = never: `ratelimit doctor` reports
-- it until `ratelimit restore` rebuilds the spend from the ledger of record). A new period starts with nothing spent
-- and no alert fired; reservations in flight carry over. The key has no TTL:
-- an eviction policy that only takes keys with a TTL (volatile-*) never
-- takes a budget.
--
-- Spend never silently goes back to zero. When the key is gone (a restart
-- without persistence, an eviction, a flush) or holds less than a client has
-- already seen this period (its floor), the spend found is raised to what is
-- known: the floor, or, when the key is missing, the period's spend counters
-- if they survived. A "restored" event tells the client to log it.

-- Whether every budget's period and day sent hold `now` (it lies in the span
-- where both do): checked before a script writes anything, so that a client
-- whose clock is off (status -2) changes nothing at all.
local function periods_hold(scopes, now)
  for _, scope in ipairs(scopes) do
    local b = scope.budget
    if b and not (b.from <= now and now < b.to) then
      return false
    end
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

-- A budget's state for the period sent (which the caller has checked holds
-- now, lib/budget.lua periods_hold). What is only passed on is kept as text.
local function load_budget(scope, now, events)
  local b = scope.budget
  local raw = redis.call('GET', scope.budget_key)
  local st = { spent = 0, reserved = 0, fired = '0', lost = '0', label = b.label }
  local floor = b.floor
  if raw then
    local p, spent, reserved, fired, lost = string.match(raw,
      '^(%d+) %d+ (%d+) (%d+) (%d+) %d+ %S+ ?(%d*)')
    st.reserved = tonumber(reserved)
    if lost ~= '' then st.lost = lost end
    if p == b.start_s then st.spent, st.fired = tonumber(spent), fired end
  elseif b.count_days then
    floor = math.max(floor, counted_spend(scope, b.label))
  end
  if st.spent < floor then
    events[#events + 1] = { 'restored', scope.j, string.format('%d', st.spent),
      string.format('%d', floor) }
    st.spent, st.lost = floor, string.format('%d', now)
  end
  b.st = st
  return st
end

local function save_budget(scope)
  local b, st = scope.budget, scope.budget.st
  redis.call('SET', scope.budget_key, b.start_s .. ' ' .. b.stop_s .. ' ' ..
    string.format('%d %d ', st.spent, st.reserved) .. st.fired .. ' ' .. b.limit_s .. ' ' ..
    b.label .. ' ' .. st.lost)
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

-- The reply of acquire.lua or settle.lua in their common case (admitted, or
-- settled, with nothing to report): one string, "<head> <j> <label> <spent>
-- ..." with seen_spend's figures; a single string is much less to build, send
-- and parse than nested tables.
local function compact_reply(head, scopes)
  for _, scope in ipairs(scopes) do
    local st = scope.budget and scope.budget.st
    if st then head = head .. ' ' .. scope.jt .. ' ' .. st.label .. string.format(' %d', st.spent) end
  end
  return head
end
