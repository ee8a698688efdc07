-- state.lua: every dimension of every scope as it stands now.
-- lib: clock ttl bucket args budget alerts msgpack ledger permit finish reclaim
--
-- KEYS     as in lib/args.lua: permits, leases, then 4 keys per scope
-- ARGV[1..] the scope block (lib/args.lua); amounts are ignored
-- Reply    {1, now_us, alerts, levels, budgets} or {-2, now_us, {}} (periods
--          sent do not hold now_us). levels: micro-units in each rate bucket
--          now, in the order sent, refilled and capped (negative while
--          callers are booked ahead: the refill still owed to them); budgets:
--          {spent, reserved, period_end_us} per scope with a budget, in
--          order; alerts (lib/args.lua): crossed by permits reclaimed now.
-- It writes only to reclaim permits whose lease ended, so that what it
-- reports as reserved is what is really in flight.

local scopes = read_scopes(1)
local now = now_us()
local out = { alerts = {}, overshoots = {} }
if not reclaim_expired(scopes, now, out) then return { -2, now, {} } end
local levels, budgets = {}, {}
for _, scope in ipairs(scopes) do
  local raw = read_buckets(scope)
  for i, d in ipairs(scope.rates) do
    local level, _, at = bucket_at(decode(raw[i]), d.cap, d.num, d.den, now)
    -- Booked ahead: what the bucket holds now is its level then, less the
    -- refill still to come before then.
    levels[#levels + 1] = level - math.ceil((at - now) / d.den * d.num)
  end
  if scope.budget then
    local st = load_budget(scope, now)
    if not st then return { -2, now, {} } end
    budgets[#budgets + 1] = { string.format('%d', st.spent), string.format('%d', st.reserved),
      string.format('%d', st.stop) }
  end
end
return { 1, now, out.alerts, levels, budgets }
