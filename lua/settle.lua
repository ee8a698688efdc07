-- settle.lua: turn a permit's reservation into its actual cost, once, on
-- scopes of which at least one has a budget (acquire.lua made the permit).
-- lib: clock bucket rates args budget alerts msgpack ledger permit finish lower
--
-- KEYS[1]  permits hash, KEYS[2] leases sorted set, then the scopes' keys
--          (lib/args.lua)
-- ARGV[1]  permit id
-- ARGV[2..] the scope block (lib/args.lua), amounts = actual use (-1 = keep
--          what was reserved; a cancel sends 0 everywhere), then model,
--          tokens and tags for the ledger entry (each "" = as at acquire),
--          and the entry's kind: "settled" or "cancelled", then what the
--          provider says is left ("<j>:<dim>:<micro-units> ...", "" = no
--          figures): after the settle, those buckets are brought down to it,
--          as observe.lua does, in the same call
-- Reply    "<now_us> <seen...>": settled with nothing to report and no
--          overshoot (lib/budget.lua compact_reply), the common case; else
--          {status, now_us, notes, overshoots, seen}
--          status 1 = settled: each rate bucket got back reserved - actual
--          (capped at its capacity) or, when actual is larger, was debited
--          the difference (it may go into debt, so later callers wait); each
--          budget turned its reservation into the actual spend, with a ledger
--          entry and its spend counter; 0 = unknown permit (already settled,
--          cancelled or reclaimed, by this process or another): nothing
--          changed; -2 = the budget periods sent do not hold now_us.
--          overshoots: {{j, nano-dollars}, ...} where a budget's actual cost
--          passed its reservation; seen: the budgets' spend (lib/budget.lua).
-- A settle after the lease ended still applies while no call has reclaimed
-- the permit yet: the actual cost is better than the worst case.

local id = ARGV[1]
local scopes, at = read_scopes(2, 3)
local model, tokens, tags, kind = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
local figures = ARGV[at + 4] or ''
local now = now_us()
local out = { alerts = {}, overshoots = {}, events = {} }

local record = redis.call('HGET', PERMITS, id)
if not record then return { 0, now, false, {}, {} } end
if not periods_hold(scopes, now) then return { -2, now, false } end
local rec = decode_record(record)
if model == '' then model = rec.model end
if tokens == '' then tokens = rec.tokens end
if tags == '' then tags = rec.tags end

for _, scope in ipairs(scopes) do
  -- A scope whose rates keep what they reserved, with no provider figures,
  -- leaves its buckets alone: they are not even read.
  local moves = figures ~= ''
  for _, d in ipairs(scope.rates) do moves = moves or d.amount >= 0 end
  if moves then read_rates(scope, now, out.events) end
end
local function actual(d, reserved)
  if d.amount < 0 then return reserved end
  return d.amount
end
finish_permit(scopes, id, rec, actual, kind, model, tokens, tags, now, out)
redis.call('HDEL', PERMITS, id)
redis.call('ZREM', LEASES, id)
for j in pairs(lower_to(scopes, figures, now)) do scopes[j].changed = true end
for _, scope in ipairs(scopes) do
  if scope.changed then write_rates(scope, now) end
end
local noted = notes(out.alerts, out.events)
if not noted and #out.overshoots == 0 then
  return compact_reply(string.format('%d', now), scopes)
end
return { 1, now, noted, out.overshoots, seen_spend(scopes) }
