-- restore.lua: after Redis lost data, bring one scope's spend counters and its
-- budget's spend for the current period back up to what the ledger of record
-- holds (PostgreSQL, summed by the client) plus what the ledger stream holds
-- that PostgreSQL does not have yet (read here, so no settle can slip in
-- between). A counter only grows, by what it lacks; spend is only raised; so
-- nothing is counted twice and a second restore changes nothing. The budget's
-- lost_us (when Redis was found to have lost its spend, lib/budget.lua) goes
-- back to 0: the spend is the ledger of record's again.
-- lib: clock
--
-- KEYS[1]  the budget string (lib/budget.lua)
-- KEYS[2]  the ledger stream (lib/ledger.lua; records decoded with cmsgpack)
-- KEYS[3]  the spend hash: "<day>|<model>" and "<day>|<model>|saved", nano-dollars
--          (no TTL, like every money key)
-- ARGV[1]  tail_from: the first stream ID the client's sums leave out; the
--          entries from it on are added here ("" = none: the sums hold them all)
-- ARGV[2]  tail_max: the most entries that tail may hold
-- ARGV[3]  period start, ARGV[4] period end (microseconds), ARGV[5] its label
-- ARGV[6]  the ledger of record's spend in that period before tail_from, nano-dollars
-- ARGV[7]  the budget's limit in nano-dollars, to write a budget key that is
--          missing or of another period; "" = not known
-- ARGV[8]  n, then n pairs: a spend counter's field and the ledger of
--          record's sum for it before tail_from, nano-dollars
-- Reply    {1, now_us, false, spent_before, spent_after, tail_entries, added,
--          lost_us}: spent_before = -1 when the key was missing or of another
--          period; added = {field, nano-dollars added, ...}; lost_us = the
--          key's lost_us before the restore (0: none).
--          {-2, now_us, false}: the period sent does not hold now_us (resend);
--          {-3, now_us, false}: the budget key is missing or of another period
--          and no limit was sent; {-4, now_us, false, tail_entries}: the tail
--          holds more than tail_max entries. -2, -3 and -4 write nothing.

local now = now_us()
local tail_from, tail_max = ARGV[1], tonumber(ARGV[2])
local start, stop, label = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local period_spend, limit = tonumber(ARGV[6]), ARGV[7]
if not (start <= now and now < stop) then return { -2, now, false } end

-- Every read first: a script is not rolled back, so nothing that can fail
-- comes after the first write.
local raw = redis.call('GET', KEYS[1])
local key_start, key_stop, spent, reserved, fired, key_limit, key_label, lost
if raw then
  key_start, key_stop, spent, reserved, fired, key_limit, key_label, lost =
    string.match(raw, '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%S+) ?(%d*)')
end
lost = tonumber(lost) or 0
local current = key_start ~= nil and tonumber(key_start) == start
if not current and limit == '' then return { -3, now, false } end

local target, fields = {}, {}
local n = tonumber(ARGV[8])
for i = 1, n do
  local field = ARGV[7 + 2 * i]
  target[field] = tonumber(ARGV[8 + 2 * i])
  fields[#fields + 1] = field
end

local tail = {}
if tail_from ~= '' then
  tail = redis.call('XRANGE', KEYS[2], tail_from, '+', 'COUNT', tail_max + 1)
  if #tail > tail_max then return { -4, now, false, #tail } end
end
for _, entry in ipairs(tail) do
  local kv, rec = entry[2], nil
  for i = 1, #kv, 2 do
    if kv[i] == 'rec' then rec = cmsgpack.unpack(kv[i + 1]) end
  end
  if rec then
    local field, amount = rec.day .. '|' .. rec.model, rec.cost_nano
    if rec.kind == 'cache_hit' then field, amount = field .. '|saved', rec.saved_nano end
    if target[field] == nil then
      target[field] = 0
      fields[#fields + 1] = field
    end
    target[field] = target[field] + amount
    if start <= rec.t and rec.t < stop then period_spend = period_spend + rec.cost_nano end
  end
end

local added = {}
for _, field in ipairs(fields) do
  local have = tonumber(redis.call('HGET', KEYS[3], field) or '0')
  if target[field] > have then
    added[#added + 1] = field
    added[#added + 1] = target[field] - have
  end
end

-- The writes.
local before, after = -1, period_spend
if current then
  before = tonumber(spent)
  after = math.max(before, period_spend)
  if after > before or lost ~= 0 then
    redis.call('SET', KEYS[1], string.format('%s %s %d %s %s %s %s 0', key_start, key_stop, after,
      reserved, fired, key_limit, key_label))
  end
else
  -- A new key for the period, as lib/budget.lua starts one: reservations in
  -- flight carry over, no alert fired yet.
  redis.call('SET', KEYS[1], string.format('%d %d %d %s 0 %s %s 0', start, stop, after,
    reserved or '0', limit, label))
end
for i = 1, #added, 2 do
  redis.call('HINCRBY', KEYS[3], added[i], string.format('%d', added[i + 1]))
  added[i + 1] = string.format('%d', added[i + 1])
end
return { 1, now, false, string.format('%d', before), string.format('%d', after), #tail, added,
  string.format('%d', lost) }
