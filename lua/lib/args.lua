-- lib/args.lua: the KEYS and ARGV layout every operation shares.
--
-- KEYS[1]  permits hash: permit id -> record (lib/permit.lua)
-- KEYS[2]  leases sorted set: permit id scored by lease end (microseconds)
-- then four keys per scope j (all scopes of one call share one hash tag):
-- KEYS[2+4j-3] state hash: rate buckets (lib/bucket.lua) and the budget
--              (lib/budget.lua)
-- KEYS[2+4j-2] ledger stream: one entry per settled or reclaimed permit, its
--              field "rec" a msgpack map (lib/ledger.lua)
-- KEYS[2+4j-1] spend hash: "<day>|<model>" -> nano-dollars settled that day
-- KEYS[2+4j]   alerts stream: one entry per alert threshold crossed
--
-- The scope block of ARGV, read from position `at` by read_scopes:
--   S, then per scope: name, nr, nr x [dim, cap, num, den, amount]
--   (lib/bucket.lua units; amount: what the operation applies, see each
--   script), nb (0 or 1), and when nb = 1:
--   dim, limit (nano-dollars), amount (as for rates, nano-dollars),
--   alerts ("ppm:nano,ppm:nano" ascending, "" for none),
--   alert channel (where lib/alerts.lua publishes; "" = do not publish),
--   p1 p2 p3 p4 l1 l2 l3 (budget periods [p1,p2) [p2,p3) [p3,p4), microseconds, and labels),
--   d1 d2 d3 d4 e1 e2 e3 (the same for the calendar days of the spend counters),
--   ledger retention: maxlen (entries, 0 = none), max_age_ms (0 = none).
--
-- Every reply starts {status, now_us, alerts, ...}: status -2 means the
-- budget periods sent do not hold now_us (the client's clock is far off):
-- nothing changed; resend periods around now_us. alerts:
-- {{j, threshold_ppm, spent, limit, period}, ...} (lib/alerts.lua).

local PERMITS, LEASES = KEYS[1], KEYS[2]
-- Permits and budgets outlive their leases and periods by this much.
local GRACE_US = 3600 * 1000000

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
      b.channel = nxt()
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
