-- lib/args.lua: the KEYS and ARGV layout every operation shares.
--
-- KEYS, per scope j in order (all scopes of one call share one hash tag):
--   the rates key (lib/rates.lua), then, for a scope with a budget, the
--   budget key (lib/budget.lua), the ledger stream (lib/ledger.lua), the
--   spend hash ("<day>|<model>" -> nano-dollars settled that day) and the
--   alerts stream (one entry per alert threshold crossed).
-- A script over budgets takes before them KEYS[1], the permits hash
-- (lib/permit.lua), and KEYS[2], the leases sorted set (permit id scored by
-- the end of its lease, microseconds); see each script.
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
--   ledger retention: maxlen (entries, 0 = none), max_age_ms (0 = none),
--   floor: the spend this client has seen in the period labelled l2
--   (nano-dollars; lib/budget.lua), and count_days: 1 when the spend
--   counters' days fall inside the budget's periods (same time zone).
--
-- Every reply starts {status, now_us, alerts, events, ...}. status -2 means
-- the budget periods sent do not hold now_us (the client's clock is far
-- off): nothing changed; resend periods around now_us. alerts:
-- {{j, threshold_ppm, spent, limit, period}, ...} (lib/alerts.lua). events:
-- what the client should log, e.g. {"conflict", j, dim, cap, num, den}
-- (lib/rates.lua), {"restored", j, spent_found, spent_restored}
-- (lib/budget.lua), {"publish_denied", j, error} (lib/alerts.lua).

local PERMITS, LEASES = KEYS[1], KEYS[2]

-- The scopes of the call: ARGV from `at`, their keys from KEYS[k].
local function read_scopes(at, k)
  local scopes = {}
  local function nxt()
    at = at + 1
    return ARGV[at - 1]
  end
  local function key()
    k = k + 1
    return KEYS[k - 1]
  end
  local s = tonumber(nxt())
  for j = 1, s do
    local scope = { j = j, name = nxt(), rates_key = key(), rates = {} }
    for i = 1, tonumber(nxt()) do
      scope.rates[i] = {
        name = nxt(), cap = tonumber(nxt()), num = tonumber(nxt()),
        den = tonumber(nxt()), amount = tonumber(nxt()),
      }
    end
    if nxt() == '1' then
      scope.budget_key, scope.ledger, scope.spend, scope.alerts = key(), key(), key(), key()
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
      b.floor, b.count_days = tonumber(nxt()), nxt() == '1'
      scope.budget = b
    end
    scopes[j] = scope
  end
  return scopes, at
end
