-- settle.lua: turn a permit's reservation into its actual cost, once.
-- lib: clock ttl bucket args budget alerts msgpack ledger permit finish lower reclaim
--
-- KEYS     as in lib/args.lua: permits, leases, then 4 keys per scope
-- ARGV[1]  permit id
-- ARGV[2..] the scope block (lib/args.lua), amounts = actual use (-1 = keep
--          what was reserved; a cancel sends 0 everywhere), then model,
--          tokens and tags for the ledger entry (each "" = as at acquire),
--          and the entry's kind: "settled" or "cancelled", then what the
--          provider says is left ("<j>:<dim>:<micro-units> ...", "" = no
--          figures): after the settle, those buckets are brought down to it,
--          as observe.lua does, in the same call
-- Reply    {status, now_us, alerts, overshoots}
--          status 1 = settled: each rate bucket got back reserved - actual
--          (capped at its capacity) or, when actual is larger, was debited
--          the difference (it may go into debt, so later callers wait); each
--          budget turned its reservation into the actual spend, with a ledger
--          entry and its spend counter; 0 = unknown permit (already settled,
--          cancelled or reclaimed, by this process or another): nothing
--          changed; -2 = the budget periods sent do not hold now_us.
--          alerts as in lib/args.lua; overshoots: {{j, nano-dollars}, ...}
--          where a budget's actual cost passed its reservation.
-- A settle after the lease ended still applies while no call has reclaimed
-- the permit yet: the actual cost is better than the worst case.

local id = ARGV[1]
local scopes, at = read_scopes(2)
local model, tokens, tags, kind = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
local remaining = ARGV[at + 4] or ''
local now = now_us()

local record = redis.call('HGET', PERMITS, id)
if not record then return { 0, now, {}, {} } end
local rec = decode_record(record)
if model == '' then model = rec.model end
if tokens == '' then tokens = rec.tokens end
if tags == '' then tags = rec.tags end

local out = { alerts = {}, overshoots = {} }
local function actual(d, reserved)
  if d.amount < 0 then return reserved end
  return d.amount
end
if not finish_permit(scopes, id, rec, actual, kind, model, tokens, tags, now, out) then
  return { -2, now, {} }
end
redis.call('HDEL', PERMITS, id)
redis.call('ZREM', LEASES, id)
if remaining ~= '' then
  local left = {}
  for key, micro in string.gmatch(remaining, '(%d+:[%w_]+):(%d+)') do left[key] = tonumber(micro) end
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(scope.rates) do
      local figure = left[scope.j .. ':' .. d.name]
      if figure then lower_bucket(scope, d, figure, 0, now) end
    end
  end
end
if not reclaim_expired(scopes, now, out) then return { -2, now, {} } end
return { 1, now, out.alerts, out.overshoots }
