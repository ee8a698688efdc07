-- acquire.lua: admit one request on scopes of which at least one has a
-- budget: check and debit every rate dimension and reserve every budget's
-- cost together, or nothing. Redis remembers the permit (its reservation and
-- lease) so a crashed worker's reservation is reclaimed and charged.
-- lib: clock bucket rates book args budget permit
--
-- KEYS[1]  permits hash, KEYS[2] leases sorted set, then the scopes' keys
--          (lib/args.lua)
-- ARGV[1]  permit id (a fresh string from the client)
-- ARGV[2]  max_wait_us: the longest the caller will wait, microseconds; -1 = no limit
-- ARGV[3]  lease_us: how long after admission the permit may stay unsettled
--          before a later call reclaims it
-- ARGV[4]  "1" when the client has just run reclaim.lua: admit even if more
--          leases ended since (the next call reclaims them), "0" otherwise
-- ARGV[5..] the scope block (lib/args.lua), amounts = costs (0 <= cost <= cap),
--          then model (ledger label, may be empty), tokens and tags (the
--          client's msgpack blobs for the ledger, kept for a reclaim)
-- Reply    "<now_us> <wait_us> <seen...>": admitted with nothing to report
--          (lib/budget.lua compact_reply), the common case; else
--          {1, now_us, notes, wait_us, seen}: admitted; the caller sleeps
--          wait_us, then goes ahead without asking again (lib/book.lua);
--          each budget reserved the cost.
--          {0, now_us, notes, retry_after_us, seen}: admission would come
--          later than max_wait_us (-1 when never); nothing was taken.
--          {-1, now_us, notes, j, spent, reserved, limit, period_end_us}:
--          scope j's budget cannot take the cost this period; waiting won't help.
--          {-2, now_us, false}: the budget periods sent do not hold now_us.
--          {-3, now_us, false}: permits whose lease ended hold reservations:
--          run reclaim.lua, then send this again. Nothing changed.
--          notes (lib/args.lua); seen: the budgets' spend (lib/budget.lua).
-- A retry with the same permit id (a reply lost to a timeout) returns the
-- first booking again instead of booking twice.

local id, max_wait, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local reclaimed = ARGV[4] == '1'
local scopes, at = read_scopes(5, 3)
local model, tokens, tags = ARGV[at], ARGV[at + 1], ARGV[at + 2]
local now, now_text = now_us_text()
local alerts, events = {}, {}

local booked = redis.call('HGET', PERMITS, id)
if booked then
  return { 1, now, false, math.max(0, decode_record(booked).admit - now), {} }
end
if not periods_hold(scopes, now) then return { -2, now, false } end
if not reclaimed and redis.call('ZRANGEBYSCORE', LEASES, '-inf', now_text, 'LIMIT', '0', '1')[1]
then
  return { -3, now, false }
end

for _, scope in ipairs(scopes) do read_rates(scope, now, events) end
local admit = admission_time(scopes, now)
for _, scope in ipairs(scopes) do
  local b = scope.budget
  if b then
    local st = load_budget(scope, now, events)
    if b.amount > 0 and st.spent + st.reserved + b.amount > b.limit then
      return { -1, now, notes(alerts, events), scope.j, string.format('%d', st.spent),
        string.format('%d', st.reserved), string.format('%d', b.limit),
        b.stop_s }
    end
  end
end
local wait, retry_after = wait_until(admit, now, max_wait)
if not wait then
  return { 0, now, notes(alerts, events), retry_after, seen_spend(scopes) }
end

local parts = {}
for _, scope in ipairs(scopes) do
  if charge(scope, admit, now) then write_rates(scope, now) end
  for _, d in ipairs(scope.rates) do
    parts[#parts + 1] = scope.jt .. ':' .. d.name .. ':' .. d.text
  end
  local b = scope.budget
  if b then
    b.st.reserved = b.st.reserved + b.amount
    parts[#parts + 1] = scope.jt .. ':$' .. b.name .. ':' .. b.text
    save_budget(scope)
  end
end
redis.call('HSET', PERMITS, id, encode_record(admit == now and now_text or string.format('%d', admit),
  parts, model, tokens, tags))
redis.call('ZADD', LEASES, admit + lease, id)
local noted = notes(alerts, events)
if not noted then
  return compact_reply(now_text .. ' ' .. (wait == 0 and '0' or string.format('%d', wait)), scopes)
end
return { 1, now, noted, wait, seen_spend(scopes) }
