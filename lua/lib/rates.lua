-- lib/rates.lua: a scope's rate buckets, all in one string key.
--
-- The value lists each dimension as seven space-separated tokens:
--   <name> <level> <rem> <rem_den> <ts> <seen> <cap>:<num>:<den>
-- level, rem, rem_den, ts: the bucket (lib/bucket.lua), in micro-units.
-- cap:num:den: the capacity (micro-units) and refill rate (num/den
-- micro-units per microsecond) Redis enforces, and seen: when a process that
-- asked for exactly that last wrote. Processes that configure a dimension
-- differently while both use it get the strictest of each (the smaller
-- capacity, the slower rate) and a "conflict" event, so they never flip-flop
-- silently; once no process has asked for the stricter setting for HOLD_US,
-- the next caller's own applies.
-- A bucket never charged, or full when its key expired, is full at any
-- capacity: it is written with ts 0. The key expires (or is deleted) when
-- every bucket would be full again: a missing key is full buckets, so a
-- permit never settled leaves nothing.

local HOLD_US = 60 * 1000000

-- The setting of dimension d that applies, given the one stored (`kept`,
-- "cap:num:den") and when its holder last wrote (`seen`): sets d.cap,
-- d.num, d.den, d.cfg and d.seen. A mismatch while the stored setting is in
-- use is a conflict, reported in `events`.
local function settle_config(scope, d, kept, seen, now, events)
  if kept == d.cfg then
    d.seen = now
    return
  end
  if now - seen > HOLD_US then
    d.seen = now -- nobody uses the stored setting any more: this one applies
    return
  end
  local cap, num, den = string.match(kept, '^(%d+):(%d+):(%d+)$')
  cap, num, den = tonumber(cap), tonumber(num), tonumber(den)
  local own_cap, own_slower = d.cap <= cap, d.num / d.den <= num / den
  if own_cap and own_slower then
    d.seen = now -- this one is the stricter: it holds from now on
  else
    if not own_cap then d.cap = cap end
    if not own_slower then d.num, d.den = num, den end
    d.cfg, d.seen = string.format('%d:%d:%d', d.cap, d.num, d.den), seen
  end
  events[#events + 1] = { 'conflict', scope.j, d.name, d.cap, d.num, d.den }
end

-- Read the scope's buckets into its dimensions (lib/bucket.lua), with the
-- setting that applies now.
local function read_rates(scope, now, events)
  for _, d in ipairs(scope.rates) do
    local cap, num, den = string.match(d.cfg, '^(%d+):(%d+):(%d+)$')
    d.cap, d.num, d.den = tonumber(cap), tonumber(num), tonumber(den)
  end
  local raw = redis.call('GET', scope.rates_key)
  local found = 0
  if raw then
    local by_name = scope.by_name
    for name, level, rem, rden, ts, seen, cfg in string.gmatch(raw,
      '(%S+) (-?%d+) (%d+) (%d+) (%d+) (%d+) (%S+)') do
      local d = by_name[name]
      if d then
        found = found + 1
        settle_config(scope, d, cfg, tonumber(seen), now, events)
        ts = tonumber(ts)
        if ts > 0 then d.level, d.rem, d.rden, d.ts = tonumber(level), tonumber(rem), tonumber(rden), ts end
      else
        -- A dimension other processes have and this one does not: kept as it is.
        scope.others = scope.others or {}
        scope.others[#scope.others + 1] = { name, tonumber(level), tonumber(rem), tonumber(rden),
          tonumber(ts), tonumber(seen), cfg }
      end
    end
  end
  if found < #scope.rates then
    for _, d in ipairs(scope.rates) do d.seen = d.seen or now end
  end
end

-- Write the scope's buckets back, to expire when every one is full again
-- (deleted at once when they all are). A bucket is stored as it is (a
-- remainder of another rate kept with its denominator): read back, it means
-- what it meant.
local function write_rates(scope, now)
  local parts, full_at = {}, now
  for i, d in ipairs(scope.rates) do
    local level = d.level
    if level then
      local rem = d.rem
      if d.rden ~= d.den then rem = 0 end
      local full = d.ts + wait_for(math.min(level, d.cap), rem, d.cap, d.num, d.den)
      if full > full_at then full_at = full end
      parts[i] = string.format('%s %d %d %d %d %d %s', d.name, level, d.rem, d.rden, d.ts, d.seen,
        d.cfg)
    else
      parts[i] = string.format('%s %d 0 %d 0 %d %s', d.name, d.cap, d.den, d.seen, d.cfg)
    end
  end
  for _, o in ipairs(scope.others or {}) do
    local name, level, rem, rden, ts, seen, cfg = unpack(o)
    if ts > 0 then
      local cap, num, den = string.match(cfg, '^(%d+):(%d+):(%d+)$')
      cap, num, den = tonumber(cap), tonumber(num), tonumber(den)
      if rden ~= den then rem = 0 end
      local full = ts + wait_for(math.min(level, cap), rem, cap, num, den)
      if full > full_at then full_at = full end
    end
    parts[#parts + 1] = string.format('%s %d %d %d %d %d %s', name, level, o[3], rden, ts, seen,
      cfg)
  end
  if full_at <= now then
    redis.call('DEL', scope.rates_key)
  else
    redis.call('SET', scope.rates_key, table.concat(parts, ' '), 'PX',
      math.ceil((full_at - now) / 1000) + 1)
  end
end
