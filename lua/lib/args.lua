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
--   S, then per scope: name, nr, nr x [dim, "cap:num:den", amount]
--   (lib/rates.lua; amount: what the operation applies, see each script),
--   nb (0 or 1), and when nb = 1:
--   dim, limit (nano-dollars), amount (as for rates, nano-dollars),
--   alerts ("ppm:nano,ppm:nano" ascending, "" for none),
--   alert channel (where lib/alerts.lua publishes; "" = do not publish),
--   the budget period the client takes to hold now: start, end
--   (microseconds) and label, the same for the calendar day of the spend
--   counters, ledger retention: maxlen (entries, 0 = none), max_age_ms
--   (0 = none), floor: the spend this client has seen in that period
--   (nano-dollars; lib/budget.lua), and count_days: 1 when the spend
--   counters' days fall inside the budget's periods (same time zone).
--
-- Every reply starts {status, now_us, notes, ...}, but for the common case
-- of acquire_rates.lua (now_us alone), acquire.lua and settle.lua (one
-- string, lib/budget.lua compact_reply). status -2 means the
-- budget period or day sent does not hold now_us (the client's clock is
-- off, or a period just ended): nothing changed; resend them for now_us. notes is false when there
-- is nothing to report (most calls), else {alerts, events}: alerts
-- {{j, threshold_ppm, spent, limit, period}, ...} (lib/alerts.lua), events
-- what the client should log, e.g. {"conflict", j, dim, cap, num, den}
-- (lib/rates.lua), {"restored", j, spent_found, spent_restored}
-- (lib/budget.lua), {"publish_denied", j, error} (lib/alerts.lua).

local PERMITS, LEASES = KEYS[1], KEYS[2]

-- A reply's notes: false when there are neither alerts nor events.
local function notes(alerts, events)
  if #alerts == 0 and #events == 0 then return false end
  return { alerts, events }
end

-- The scopes of the call: ARGV from `at`, their keys from KEYS[k].
local function read_scopes(at, k)
  local scopes = {}
  local count = tonumber(ARGV[at])
  at = at + 1
  for j = 1, count do
    local scope = { j = j, name = ARGV[at], rates_key = KEYS[k], rates = {}, by_name = {} }
    k = k + 1
    local nr = tonumber(ARGV[at + 1])
    at = at + 2
    for i = 1, nr do
      local cfg = ARGV[at + 1]
      local cap, num, den = string.match(cfg, '^(%d+):(%d+):(%d+)$')
      local d = { name = ARGV[at], cfg = cfg, cap = tonumber(cap), num = tonumber(num),
        den = tonumber(den), amount = tonumber(ARGV[at + 2]) }
      scope.rates[i], scope.by_name[d.name] = d, d
      at = at + 3
    end
    at = at + 1
    if ARGV[at - 1] == '1' then
      scope.budget_key, scope.ledger, scope.spend, scope.alerts = KEYS[k], KEYS[k + 1],
        KEYS[k + 2], KEYS[k + 3]
      k = k + 4
      local b = { name = ARGV[at], limit = tonumber(ARGV[at + 1]), amount = tonumber(ARGV[at + 2]),
        alerts = ARGV[at + 3], channel = ARGV[at + 4],
        period = { tonumber(ARGV[at + 5]), tonumber(ARGV[at + 6]), ARGV[at + 7] },
        day = { tonumber(ARGV[at + 8]), tonumber(ARGV[at + 9]), ARGV[at + 10] },
        maxlen = tonumber(ARGV[at + 11]), max_age_ms = tonumber(ARGV[at + 12]),
        floor = tonumber(ARGV[at + 13]), count_days = ARGV[at + 14] == '1' }
      at = at + 15
      scope.budget = b
    end
    scopes[j] = scope
  end
  return scopes, at
end
