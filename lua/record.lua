-- record.lua: note in the ledger a call that cost nothing because a cached
-- response answered it, with the cost it saved.
-- lib: clock args budget msgpack ledger
--
-- KEYS     KEYS[1] permits hash, KEYS[2] leases sorted set (untouched), then
--          the scopes' keys (lib/args.lua)
-- ARGV[1]  entry id (a fresh random string from the client)
-- ARGV[2..] the scope block (lib/args.lua) with each budget's amount = the
--          cost saved, nano-dollars; then model, tokens and tags (msgpack)
-- Reply    {1, now_us, false, recorded} or {-2, now_us, false} (the
--          periods sent do not hold now_us). Each budgeted scope gets a
--          ledger entry of kind "cache_hit" with cost 0 and "saved", and its
--          "<day>|<model>|saved" counter grows by the amount; spend and
--          budgets do not change.

local id = ARGV[1]
local scopes, at = read_scopes(2, 3)
local model, tokens, tags = ARGV[at], ARGV[at + 1], ARGV[at + 2]
local now = now_us()
if not periods_hold(scopes, now) then return { -2, now, false } end
local recorded = 0
for _, scope in ipairs(scopes) do
  local b = scope.budget
  if b then
    local day = b.day
    redis.call('HINCRBY', scope.spend, day .. '|' .. model .. '|saved', string.format('%d', b.amount))
    ledger_append(scope, now,
      ledger_record(scope, now, id, 'cache_hit', day, model, 0, b.amount, tokens, tags))
    recorded = recorded + 1
  end
end
return { 1, now, false, recorded }
