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
--   (microseconds) and label, then from, to: the span (microseconds) where
--   both that period and the calendar day of the spend counters hold, and
--   that day's label, ledger retention: maxlen (entries, 0 = none), max_age_ms
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

-- The scopes of the call: ARGV from `at`, their keys from KEYS[k]. A rate's
-- setting is read by lib/rates.lua read_rates, which every script that uses
-- a bucket calls first. A budget keeps the texts it only passes on (period
-- bounds, labels, retention) as they came.
local function read_scopes(at, k)
  local scopes = {}
  local count = tonumber(ARGV[at])
  at = at + 1
  for j = 1, count do
    local rates, by_name = {}, {}
    -- jt: j as text, for the keys and replies that name it (a number's
    -- conversion to text costs more than the rest of such a key).
    local jt = j < 10 and string.sub('123456789', j, j) or string.format('%d', j)
    local scope = { j = j, jt = jt, name = ARGV[at],
      rates_key = KEYS[k], rates = rates, by_name = by_name }
    k = k + 1
    local nr = tonumber(ARGV[at + 1])
    at = at + 2
    for i = 1, nr do
      local d = { name = ARGV[at], cfg = ARGV[at + 1], amount = tonumber(ARGV[at + 2]),
        text = ARGV[at + 2], cap = 0, num = 0, den = 0 }
      rates[i], by_name[d.name] = d, d
      at = at + 3
    end
    at = at + 1
    if ARGV[at - 1] == '1' then
      scope.budget_key, scope.ledger, scope.spend, scope.alerts = KEYS[k], KEYS[k + 1],
        KEYS[k + 2], KEYS[k + 3]
      k = k + 4
      scope.budget = { name = ARGV[at], limit = tonumber(ARGV[at + 1]), limit_s = ARGV[at + 1],
        amount = tonumber(ARGV[at + 2]), text = ARGV[at + 2], alerts = ARGV[at + 3],
        channel = ARGV[at + 4], start_s = ARGV[at + 5], stop_s = ARGV[at + 6],
        label = ARGV[at + 7], from = tonumber(ARGV[at + 8]), to = tonumber(ARGV[at + 9]),
        day = ARGV[at + 10],
        maxlen = ARGV[at + 11], max_age_ms = ARGV[at + 12],
        floor = tonumber(ARGV[at + 13]), count_days = ARGV[at + 14] == '1' }
      at = at + 15
    end
    scopes[j] = scope
  end
  return scopes, at
end
