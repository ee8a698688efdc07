-- observe.lua: bring rate buckets down to what the provider says is left.
--
-- When the provider's own buckets disagree with ours (another client spends
-- the same account, or a 429 arrives), every process should back off, not
-- just the one that heard it. This lowers the shared buckets; it never raises
-- them (the provider's figures may be stale by the time they arrive).
-- lib: clock bucket rates args lower
--
-- KEYS     the scopes' keys (lib/args.lua); with ARGV[1] = "1" (scopes with a
--          budget) after KEYS[1] and KEYS[2], permits and leases, untouched
-- ARGV[2..] the scope block (lib/args.lua) with amounts = what the provider
--          says remains, in micro-units (-1 = no figure for that dimension)
--          then ARGV[at] = retry_after_us: when > 0, every bucket of the
--          block is also held empty until that long from now, so no process
--          is admitted before then
-- Reply    {1, now_us, notes, lowered}: lowered = how many buckets were brought down

local scopes, at = read_scopes(2, ARGV[1] == '1' and 3 or 1)
local retry_after = tonumber(ARGV[at])
local now = now_us()
local events = {}
local lowered = 0
for _, scope in ipairs(scopes) do
  read_rates(scope, now, events)
  local changed = false
  for _, d in ipairs(scope.rates) do
    if lower_bucket(d, d.amount, retry_after, now) then
      lowered, changed = lowered + 1, true
    end
  end
  if changed then write_rates(scope, now) end
end
return { 1, now, notes({}, events), lowered }
