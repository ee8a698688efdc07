-- lib/ledger.lua: the ledger stream and the daily spend counters, written
-- together so the sum of a day's entries always equals the day's counter.
-- Neither has a TTL, as the budget string has none: an eviction policy that
-- only takes keys with a TTL (volatile-*) never takes the money's records.

-- Append one msgpack-encoded record to a scope's ledger stream, trimmed to
-- its retention (by age, or by length).
local function ledger_append(scope, now, record)
  local b = scope.budget
  local args = { 'XADD', scope.ledger }
  if b.max_age_ms > 0 then
    for _, t in ipairs({ 'MINID', '~', string.format('%d', math.floor(now / 1000) - b.max_age_ms) }) do
      args[#args + 1] = t
    end
  elseif b.maxlen > 0 then
    for _, t in ipairs({ 'MAXLEN', '~', b.maxlen }) do args[#args + 1] = t end
  end
  for _, f in ipairs({ '*', 'rec', record }) do args[#args + 1] = f end
  redis.call(unpack(args))
end

-- The ledger record of one permit's end (or a cache hit): time (Redis,
-- microseconds), scope, permit id, kind, day, model, cost and what a cache
-- hit saved (nano-dollars), and the client's tokens and tags.
local function ledger_record(scope, now, id, kind, day, model, cost, saved, tokens, tags)
  if tokens == '' then tokens = string.char(0x80) end
  if tags == '' then tags = string.char(0x80) end
  return mp_map({ 't', mp_uint(now), 'scope', mp_str(scope.name), 'id', mp_str(id),
    'kind', mp_str(kind), 'day', mp_str(day), 'model', mp_str(model),
    'cost_nano', mp_uint(cost), 'saved_nano', mp_uint(saved), 'tokens', tokens, 'tags', tags })
end

-- One ledger entry and the matching spend counter, written together so the
-- sum of a day's entries always equals the day's counter.
local function record_spend(scope, now, id, kind, cost, model, tokens, tags)
  local day = scope.budget.day[3]
  -- The counter first: a script is not rolled back, so whatever could fail
  -- goes before the entry that must match it.
  redis.call('HINCRBY', scope.spend, day .. '|' .. model, string.format('%d', cost))
  ledger_append(scope, now, ledger_record(scope, now, id, kind, day, model, cost, 0, tokens, tags))
end
