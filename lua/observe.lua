-- observe.lua: bring rate buckets down to what the provider says is left.
--
-- When the provider's own buckets disagree with ours (another client spends
-- the same account, or a 429 arrives), every process should back off, not
-- just the one that heard it. This lowers the shared buckets; it never raises
-- them (the provider's figures may be stale by the time they arrive).
-- lib: clock ttl bucket args lower
--
-- KEYS     as in lib/args.lua: permits, leases, then 4 keys per scope
-- ARGV[1..] the scope block (lib/args.lua) with amounts = what the provider says
--          remains, in micro-units (-1 = no figure for that dimension)
--          then ARGV[at] = retry_after_us: when > 0, every bucket of the
--          block is also held empty until that long from now, so no process
--          is admitted before then
-- Reply    {1, now_us, {}, lowered}: lowered = how many buckets were brought down

local scopes, at = read_scopes(1)
local retry_after = tonumber(ARGV[at])
local now = now_us()
local lowered = 0
for _, scope in ipairs(scopes) do
  for _, d in ipairs(scope.rates) do
    lowered = lowered + lower_bucket(scope, d, d.amount, retry_after, now)
  end
end
return { 1, now, {}, lowered }
