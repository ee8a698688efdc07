-- quota.lua: shared helpers for scopes, budgets, permits, the ledger and
-- alerts, prepended (after bucket.lua) to acquire.lua, settle.lua and
-- state.lua. It defines no KEYS/ARGV contract of its own; this is the part of
-- theirs that all three share.
--
-- KEYS[1]  permits hash: permit id -> record (see encode_record)
-- KEYS[2]  leases sorted set: permit id scored by lease end (microseconds)
-- then four keys per scope j (all scopes of one call share one hash tag):
-- KEYS[2+4j-3] state hash: rate buckets (bucket.lua) and the budget, field
--              "$<dim>" = "<period_start_us> <spent> <reserved> <fired_ppm>"
--              (nano-dollars; fired_ppm = highest alert threshold reported
--              this period, in parts per million of the limit)
-- KEYS[2+4j-2] ledger stream: one entry per settled or reclaimed permit, its
--              field "rec" a msgpack map (see ledger_record)
-- KEYS[2+4j-1] spend hash: "<day>|<model>" -> nano-dollars settled that day
-- KEYS[2+4j]   alerts stream: one entry per alert threshold crossed
--
-- The scope block of ARGV, read from position `at` by read_scopes:
--   S, then per scope: name, nr, nr x [dim, cap, num, den, amount]
--   (bucket.lua units; amount: acquire = cost, settle = actual or -1 to
--   keep the reservation, state = ignored), nb (0 or 1), and when nb = 1:
--   dim, limit (nano-dollars), amount (as for rates, nano-dollars),
--   alerts ("ppm:nano,ppm:nano" ascending, "" for none),
--   p1 p2 p3 p4 l1 l2 l3 (budget periods [p1,p2) [p2,p3) [p3,p4), microseconds, and labels),
--   d1 d2 d3 d4 e1 e2 e3 (the same for the calendar days of the spend counters),
--   ledger retention: maxlen (entries, 0 = none), max_age_ms (0 = none).

local PERMITS, LEASES = KEYS[1], KEYS[2]
-- Debt past this would leave the exact range of doubles; no real quota gets near.
local FLOOR = -2251799813685248
local GRACE_US = 3600 * 1000000 -- permits and budgets outlive their leases by this much

local function read_scopes(at)
  local scopes = {}
  local function nxt()
    at = at + 1
    return ARGV[at - 1]
  end
  local s = tonumber(nxt())
  for j = 1, s do
    local base = 2 + 4 * (j - 1)
    local scope = {
      j = j, name = nxt(), state = KEYS[base + 1], ledger = KEYS[base + 2],
      spend = KEYS[base + 3], alerts = KEYS[base + 4], rates = {},
    }
    for i = 1, tonumber(nxt()) do
      scope.rates[i] = {
        name = nxt(), cap = tonumber(nxt()), num = tonumber(nxt()),
        den = tonumber(nxt()), amount = tonumber(nxt()),
      }
    end
    if nxt() == '1' then
      local b = { name = nxt(), limit = tonumber(nxt()), amount = tonumber(nxt()), alerts = {} }
      for ppm, nano in string.gmatch(nxt(), '(%d+):(%d+)') do
        b.alerts[#b.alerts + 1] = { tonumber(ppm), tonumber(nano) }
      end
      b.periods = { tonumber(nxt()), tonumber(nxt()), tonumber(nxt()), tonumber(nxt()),
        nxt(), nxt(), nxt() }
      b.days = { tonumber(nxt()), tonumber(nxt()), tonumber(nxt()), tonumber(nxt()),
        nxt(), nxt(), nxt() }
      b.maxlen, b.max_age_ms = tonumber(nxt()), tonumber(nxt())
      scope.budget = b
    end
    scopes[j] = scope
  end
  return scopes, at
end

-- The raw bucket fields of a scope's rate dimensions, in order (one HMGET).
local function read_buckets(scope)
  if #scope.rates == 0 then return {} end
  local names = {}
  for i, d in ipairs(scope.rates) do names[i] = d.name end
  return redis.call('HMGET', scope.state, unpack(names))
end

-- The [start, end) and label of the period holding `now`, or nil when the
-- client sent boundaries around a different time (its clock is far off).
local function period_of(p, now)
  for i = 1, 3 do
    if p[i] <= now and now < p[i + 1] then return p[i], p[i + 1], p[i + 4] end
  end
  return nil
end

-- A budget's state for the period holding `now` (a new period starts with
-- nothing spent and no alert fired; reservations in flight carry over).
local function load_budget(scope, now)
  local b = scope.budget
  local start, stop, label = period_of(b.periods, now)
  if not start then return nil end
  local raw = redis.call('HGET', scope.state, '$' .. b.name)
  local st = { start = start, stop = stop, label = label, spent = 0, reserved = 0, fired = 0 }
  if raw then
    local p, spent, reserved, fired = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
    st.reserved = tonumber(reserved)
    if tonumber(p) == start then
      st.spent, st.fired = tonumber(spent), tonumber(fired)
    end
  end
  b.st = st
  return st
end

local function save_budget(scope, now, keep_until)
  local b, st = scope.budget, scope.budget.st
  redis.call('HSET', scope.state, '$' .. b.name,
    string.format('%d %d %d %d', st.start, st.spent, st.reserved, st.fired))
  local until_us = math.max(st.stop, keep_until or 0) + GRACE_US
  extend_ttl(scope.state, (until_us - now) / 1000)
end

-- Report every alert threshold the spend has now reached for the first time
-- this period: into the reply, the scope's alerts stream and the channel.
local function check_alerts(scope, now, alerts)
  local b, st = scope.budget, scope.budget.st
  for _, a in ipairs(b.alerts) do
    if a[1] > st.fired and st.spent >= a[2] then
      st.fired = a[1]
      local spent, limit = string.format('%d', st.spent), string.format('%d', b.limit)
      alerts[#alerts + 1] = { scope.j, a[1], spent, limit, st.label }
      redis.call('XADD', scope.alerts, 'MAXLEN', '~', 1000, '*', 'scope', scope.name,
        'threshold_ppm', a[1], 'spent', spent, 'limit', limit, 'period', st.label,
        't', string.format('%d', now))
      redis.call('PUBLISH', 'rl:v1:alerts', table.concat(
        { scope.name, a[1], spent, limit, st.label, string.format('%d', now) }, '\t'))
    end
  end
end

-- msgpack, as much as a ledger record needs (Redis has cmsgpack, fakeredis
-- does not): strings, integers in [0, 2^53) and values the client encoded.
local function mp_str(v)
  local n = #v
  if n < 32 then return string.char(0xa0 + n) .. v end
  if n < 256 then return string.char(0xd9, n) .. v end
  if n < 65536 then return string.char(0xda, math.floor(n / 256), n % 256) .. v end
  return string.char(0xdb, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. v
end

local function mp_uint(x)
  if x < 128 then return string.char(x) end
  local bytes = {}
  for i = 8, 1, -1 do
    bytes[i] = x % 256
    x = math.floor(x / 256)
  end
  return string.char(0xcf, unpack(bytes))
end

-- A map from a flat list key1, encoded1, key2, encoded2, ... (at most 15 pairs).
local function mp_map(kv)
  local out = { string.char(0x80 + #kv / 2) }
  for i = 1, #kv, 2 do
    out[#out + 1] = mp_str(kv[i])
    out[#out + 1] = kv[i + 1]
  end
  return table.concat(out)
end

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
  local b = scope.budget
  local _, _, day = period_of(b.days, now)
  day = day or b.st.label
  -- The counter first: a script is not rolled back, so whatever could fail
  -- goes before the entry that must match it.
  redis.call('HINCRBY', scope.spend, day .. '|' .. model, string.format('%d', cost))
  ledger_append(scope, now, ledger_record(scope, now, id, kind, day, model, cost, 0, tokens, tags))
  extend_ttl(scope.spend, 400 * 86400 * 1000, 86400 * 1000)
end

-- Permit records: "<admit_us>\n<j>:<dim>:<amount> ...\n<model>\n<#tokens>\n<tokens><tags>"
-- (a budget amount's dim is written "$<dim>"; tokens and tags are the
-- client's msgpack blobs, split by the length of the first).
local function encode_record(admit, parts, model, tokens, tags)
  return string.format('%d', admit) .. '\n' .. table.concat(parts, ' ') .. '\n' .. model ..
    '\n' .. #tokens .. '\n' .. tokens .. tags
end

local function decode_record(record)
  local admit, parts, model, n, rest = string.match(record,
    '^(%d+)\n([^\n]*)\n([^\n]*)\n(%d+)\n(.*)$')
  local amounts = {}
  for key, amount in string.gmatch(parts, '(%d+:%$?[%w_]+):(%d+)') do
    amounts[key] = tonumber(amount)
  end
  n = tonumber(n)
  return { admit = tonumber(admit), amounts = amounts, model = model,
    tokens = string.sub(rest, 1, n), tags = string.sub(rest, n + 1) }
end

-- Apply a permit's end: refund or charge its rate buckets (settle), move its
-- budget reservation into spend, write the ledger, report alerts and
-- overshoots. `actual(scope, dim, reserved)` gives each dimension's final
-- amount. Returns false when a budget's period could not be placed.
local function finish_permit(scopes, id, rec, actual, kind, model, tokens, tags, now, out)
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(scope.rates) do
      local reserved = rec.amounts[scope.j .. ':' .. d.name] or 0
      local back = reserved - actual(d, reserved)
      if back ~= 0 then
        local level, rem, at = bucket_at(decode(redis.call('HGET', scope.state, d.name)), d.cap,
          d.num, d.den, now)
        if back < 0 then
          -- Used more than reserved: a debt after everyone booked, so later callers wait.
          level = math.max(level + back, FLOOR)
        elseif rec.admit <= now or rec.admit >= at then
          -- The call went out (its unused part comes back after everyone
          -- already booked, as the provider's own bucket gives back an
          -- unused reservation), or nobody is booked after it: credited.
          level = level + back
          if level >= d.cap then level, rem = d.cap, 0 end
        else
          -- A booking still in line with others booked after it: those were
          -- timed without its units, and handing them to a newcomer would
          -- squeeze it in just before them, more than the provider's bucket
          -- holds (that call never reached the provider to be given back).
          -- The slot stays spent.
          back = 0
        end
        if back ~= 0 then
          redis.call('HSET', scope.state, d.name, encode(level, rem, d.den, at))
          extend_ttl(scope.state, (at - now + wait_for(level, rem, d.cap, d.num, d.den)) / 1000 + 1)
        end
      end
    end
    local b = scope.budget
    local key = b and (scope.j .. ':$' .. b.name)
    if b and rec.amounts[key] then
      if not load_budget(scope, now) then return false end
      local reserved = rec.amounts[key]
      local cost = actual(b, reserved)
      b.st.reserved = math.max(0, b.st.reserved - reserved)
      b.st.spent = b.st.spent + cost
      if cost > reserved then out.overshoots[#out.overshoots + 1] = { scope.j, cost - reserved } end
      record_spend(scope, now, id, kind, cost, model, tokens, tags)
      check_alerts(scope, now, out.alerts)
      save_budget(scope, now)
    end
  end
  return true
end

-- Bring a rate bucket down to what the provider says is left (`remaining`
-- micro-units, -1 = no figure), and with `retry_after` > 0 hold it empty
-- until that long from now. Never raises a bucket. Returns 1 if lowered.
local function lower_bucket(scope, d, remaining, retry_after, now)
  local level, rem, at = bucket_at(decode(redis.call('HGET', scope.state, d.name)), d.cap,
    d.num, d.den, now)
  local new_level, new_rem, new_at = level, rem, at
  if remaining >= 0 and remaining < new_level then new_level, new_rem = remaining, 0 end
  if retry_after > 0 and new_at < now + retry_after then
    -- Nobody goes before now + retry_after, and the bucket is empty then.
    new_at = now + retry_after
    new_level, new_rem = refill({ new_level, new_rem, d.den, at }, d.cap, d.num, d.den, new_at)
    if new_level > 0 then new_level, new_rem = 0, 0 end
  end
  if new_at == at and new_level >= level then return 0 end
  redis.call('HSET', scope.state, d.name, encode(new_level, new_rem, d.den, new_at))
  extend_ttl(scope.state, (new_at - now + wait_for(new_level, new_rem, d.cap, d.num, d.den)) / 1000
    + 1)
  return 1
end

-- Reclaim a few permits whose lease ended without a settle (a few per call
-- keeps each call O(1) and the permits bounded; no background process).
-- Their rate buckets keep what they took. Their budget reservation is
-- charged in full: a worker that died mid-call may well have been billed,
-- and charging the worst case can only keep spend under the limit.
local function reclaim_expired(scopes, now, out)
  local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 8)
  for _, id in ipairs(expired) do
    local record = redis.call('HGET', PERMITS, id)
    if record then
      local rec = decode_record(record)
      if not finish_permit(scopes, id, rec, function(_, reserved) return reserved end,
        'reclaimed', rec.model, rec.tokens, rec.tags, now, out) then
        return false
      end
    end
    redis.call('HDEL', PERMITS, id)
    redis.call('ZREM', LEASES, id)
  end
  return true
end
