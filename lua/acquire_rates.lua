-- acquire_rates.lua: admit one request on scopes without a budget: check and
-- debit every rate dimension of every scope together, or none. Redis keeps
-- nothing of the permit: the client's permit carries its admission time and
-- reservation (settle_rates.lua takes them back), so a permit that is never
-- settled leaves nothing once its buckets have refilled.
-- lib: clock bucket rates book args
--
-- KEYS     per scope, its rates key (lib/args.lua)
-- ARGV[1]  max_wait_us: the longest the caller will wait, microseconds; -1 = no limit
-- ARGV[2..] the scope block (lib/args.lua), amounts = costs (0 <= cost <= cap)
-- Reply    now_us alone: admitted at once, nothing to report (the common
--          case: one integer is the least to build, send and parse).
--          {1, now_us, notes, wait_us}: admitted; the caller sleeps
--          wait_us, then goes ahead without asking again (lib/book.lua).
--          {0, now_us, notes, retry_after_us}: admission would come later
--          than max_wait_us (-1 when never); nothing was taken.
--          notes (lib/args.lua): conflicts between processes' rates.
-- A retry after a lost reply books again: the first booking is spent, so a
-- lost reply can only under-admit, never over-admit.

local max_wait = tonumber(ARGV[1])
local scopes = read_scopes(2, 1)
local now = now_us()
local events = {}
for _, scope in ipairs(scopes) do read_rates(scope, now, events) end
local wait, retry_after = wait_until(admission_time(scopes, now), now, max_wait)
if not wait then return { 0, now, notes({}, events), retry_after } end
for _, scope in ipairs(scopes) do
  if charge(scope, now + wait, now) then write_rates(scope, now) end
end
if wait == 0 and #events == 0 then return now end
return { 1, now, notes({}, events), wait }
