-- acquire.lua: check and debit every dimension of every scope of one request
-- together, or none.
-- lib: clock ttl bucket args budget alerts msgpack ledger permit finish reclaim
--
-- KEYS     as in lib/args.lua: permits, leases, then 4 keys per scope
-- ARGV[1]  permit id (a fresh random string from the client)
-- ARGV[2]  max_wait_us: the longest the caller will wait, microseconds; -1 = no limit
-- ARGV[3]  lease_us: how long after admission the permit may stay unsettled
--          before a later call reclaims it
-- ARGV[4..] the scope block (lib/args.lua), amounts = costs (0 <= cost <= cap),
--          then model (ledger label, may be empty), tokens and tags (the
--          client's msgpack blobs for the ledger, kept for a reclaim)
-- Reply    {1, now_us, alerts, wait_us}: admitted; the caller sleeps wait_us,
--          then goes ahead without asking again. Its place is booked: the
--          admission time is the first instant at which every dimension it
--          costs can pay, after everyone booked before it on that dimension
--          (first come, first served), and each of those buckets is charged
--          as of that instant; budgets reserved the cost.
--          {0, now_us, alerts, retry_after_us}: admission would come later
--          than max_wait_us (-1 when never); nothing of this request was taken.
--          {-1, now_us, alerts, j, spent, reserved, limit, period_end_us}:
--          scope j's budget cannot take the cost this period; waiting won't help.
--          {-2, now_us, {}}: the budget periods sent do not hold now_us.
--          alerts (lib/args.lua): crossed by permits reclaimed during this call.
-- A retry with the same permit id (a reply lost to a timeout) returns the
-- first booking again instead of booking twice.

local id = ARGV[1]
local max_wait = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local scopes, at = read_scopes(4)
local model, tokens, tags = ARGV[at], ARGV[at + 1], ARGV[at + 2]
local now = now_us()

local booked = redis.call('HGET', PERMITS, id)
if booked then
  return { 1, now, {}, math.max(0, decode_record(booked).admit - now) }
end

local out = { alerts = {}, overshoots = {} }
if not reclaim_expired(scopes, now, out) then return { -2, now, {} } end

local admit = now
for _, scope in ipairs(scopes) do
  local raw = read_buckets(scope)
  for i, d in ipairs(scope.rates) do
    d.level, d.rem, d.at = bucket_at(decode(raw[i]), d.cap, d.num, d.den, now)
    if d.amount > 0 then
      local ready = d.at + wait_for(d.level, d.rem, d.amount, d.num, d.den)
      if ready > admit then admit = ready end
    end
  end
  local b = scope.budget
  if b then
    local st = load_budget(scope, now)
    if not st then return { -2, now, {} } end
    if b.amount > 0 and st.spent + st.reserved + b.amount > b.limit then
      return { -1, now, out.alerts, scope.j, string.format('%d', st.spent),
        string.format('%d', st.reserved), string.format('%d', b.limit),
        string.format('%d', st.stop) }
    end
  end
end

-- Bookings past this would leave the exact range of doubles; none gets near.
local wait = admit - now
if admit > 4503599627370496 then wait = math.huge end
if wait == math.huge or (max_wait >= 0 and wait > max_wait) then
  if wait == math.huge then wait = -1 end
  return { 0, now, out.alerts, wait }
end

local lease_end = now + wait + lease
local parts = {}
for _, scope in ipairs(scopes) do
  local full_in, fields = 0, {}
  for _, d in ipairs(scope.rates) do
    if d.amount > 0 then
      -- Charged at its admission: refilled (up to capacity) until then.
      local level, rem = refill({ d.level, d.rem, d.den, d.at }, d.cap, d.num, d.den, admit)
      level = level - d.amount
      fields[#fields + 1] = d.name
      fields[#fields + 1] = encode(level, rem, d.den, admit)
      full_in = math.max(full_in, wait + wait_for(level, rem, d.cap, d.num, d.den))
    end
    parts[#parts + 1] = scope.j .. ':' .. d.name .. ':' .. string.format('%d', d.amount)
  end
  if #fields > 0 then
    redis.call('HSET', scope.state, unpack(fields))
    extend_ttl(scope.state, full_in / 1000 + 1)
  end
  local b = scope.budget
  if b then
    b.st.reserved = b.st.reserved + b.amount
    parts[#parts + 1] = scope.j .. ':$' .. b.name .. ':' .. string.format('%d', b.amount)
    save_budget(scope, now, lease_end)
  end
end

redis.call('HSET', PERMITS, id, encode_record(admit, parts, model, tokens, tags))
redis.call('ZADD', LEASES, lease_end, id)
-- Never shortened, so the keys outlive the latest lease of all.
local keep_ms = (lease_end + GRACE_US - now) / 1000
extend_ttl(PERMITS, keep_ms, GRACE_US / 1000)
extend_ttl(LEASES, keep_ms, GRACE_US / 1000)
return { 1, now, out.alerts, wait }
