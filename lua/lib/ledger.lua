-- lib/ledger.lua: the ledger stream and the daily spend counters, written
-- together so the sum of a day's entries always equals the day's counter.
-- Neither has a TTL, as the budget string has none: an eviction policy that
-- only takes keys with a TTL (volatile-*) never takes the money's records.

-- Append one msgpack-encoded record to a scope's ledger stream, trimmed to
-- its retention (by age, or by length).
local function ledger_append(scope, now, record)
  local b = scope.budget
  if b.max_age_ms ~= '0' then
    redis.call('XADD', scope.ledger, 'MINID', '~',
      string.format('%d', math.floor(now / 1000) - tonumber(b.max_age_ms)), '*', 'rec', record)
  elseif b.maxlen ~= '0' then
    redis.call('XADD', scope.ledger, 'MAXLEN', '~', b.maxlen, '*', 'rec', record)
  else
    redis.call('XADD', scope.ledger, '*', 'rec', record)
  end
end

-- The ledger record of one permit's end (or a cache hit): time (Redis,
-- microseconds), scope, permit id, kind, day, model, cost and what a cache
-- hit saved (nano-dollars), and the client's tokens and tags. A map of ten
-- entries whose keys are written out already encoded (lib/msgpack.lua).
local function ledger_record(scope, now, id, kind, day, model, cost, saved, tokens, tags)
  if tokens == '' then tokens = '\128' end
  if tags == '' then tags = '\128' end
  return '\138\161t' .. mp_uint(now) .. '\165scope' .. mp_str(scope.name) .. '\162id' ..
    mp_str(id) .. '\164kind' .. mp_str(kind) .. '\163day' .. mp_str(day) .. '\165model' ..
    mp_str(model) .. '\169cost_nano' .. mp_uint(cost) .. '\170saved_nano' .. mp_uint(saved) ..
    '\166tokens' .. tokens .. '\164tags' .. tags
end

-- One ledger entry and the matching spend counter, written together so the
-- sum of a day's entries always equals the day's counter. `cost_text`: the
-- cost as text when the caller has it (else nil).
local function record_spend(scope, now, id, kind, cost, cost_text, model, tokens, tags)
  local day = scope.budget.day
  -- The counter first: a script is not rolled back, so whatever could fail
  -- goes before the entry that must match it.
  redis.call('HINCRBY', scope.spend, day .. '|' .. model, cost_text or string.format('%d', cost))
  ledger_append(scope, now, ledger_record(scope, now, id, kind, day, model, cost, 0, tokens, tags))
end
