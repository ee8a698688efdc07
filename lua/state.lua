-- state.lua: every dimension of every scope as it stands now.
-- lib: clock bucket rates args budget alerts msgpack ledger permit finish reclaim
--
-- KEYS     with ARGV[1] = "1" (scopes with a budget): KEYS[1] permits hash,
--          KEYS[2] leases sorted set, then the scopes' keys; with "0": the
--          scopes' keys only (lib/args.lua)
-- ARGV[2..] the scope block (lib/args.lua); amounts are ignored
-- Reply    {1, now_us, notes, rates, budgets} or {-2, now_us, false}.
--          rates: per rate dimension, in the order sent, {level, cap, num,
--          den}: micro-units in the bucket now, refilled and capped (negative
--          while callers are booked ahead: the refill still owed to them),
--          and the capacity and refill rate Redis enforces (lib/rates.lua);
--          budgets: {spent, reserved, period_end_us} per scope with a budget,
--          in order; notes (lib/args.lua): alerts crossed by permits
--          reclaimed now.
-- It writes only to reclaim permits whose lease ended, so that what it
-- reports as reserved is what is really in flight.

local budgeted = ARGV[1] == '1'
local scopes = read_scopes(2, budgeted and 3 or 1)
local now = now_us()
local out = { alerts = {}, overshoots = {}, events = {} }
if budgeted then
  if not periods_hold(scopes, now) then return { -2, now, false } end
  reclaim_expired(scopes, now, out)
end
local rates, budgets = {}, {}
for _, scope in ipairs(scopes) do
  read_rates(scope, now, out.events)
  for _, d in ipairs(scope.rates) do
    local level, _, at = bucket_at(d, now)
    -- Booked ahead: what the bucket holds now is its level then, less the
    -- refill still to come before then.
    level = level - math.ceil((at - now) / d.den * d.num)
    rates[#rates + 1] = { level, d.cap, d.num, d.den }
  end
  if scope.budget then
    local st = load_budget(scope, now, out.events)
    budgets[#budgets + 1] = { string.format('%d', st.spent), string.format('%d', st.reserved),
      scope.budget.stop_s }
  end
end
return { 1, now, notes(out.alerts, out.events), rates, budgets }
