-- observe.lua: bring rate buckets down to what the provider says is left.
--
-- When the provider's own buckets disagree with ours (another client spends
-- the same account, or a 429 arrives), every process should back off, not
-- just the one that heard it. This lowers the shared buckets; it never raises
-- them (the provider's figures may be stale by the time they arrive).
--
-- KEYS     as in quota.lua: permits, leases, then 4 keys per scope
-- ARGV[1..] the scope block (quota.lua) with amounts = what the provider says
--          remains, in micro-units (-1 = no figure for that dimension)
--          then ARGV[at] = retry_after_us: when > 0, every bucket of the
--          block is also brought to a level that refills to zero only after
--          that long, so no process is admitted before then
-- Reply    {now_us, lowered}: lowered = how many buckets were brought down

local scopes, at = read_scopes(1)
local retry_after = tonumber(ARGV[at])
local now = now_us()
local lowered = 0
for _, scope in ipairs(scopes) do
  for _, d in ipairs(scope.rates) do
    local level, rem = refill(decode(redis.call('HGET', scope.state, d.name)), d.cap, d.num,
      d.den, now)
    local target = level
    if d.amount >= 0 and d.amount < target then target = d.amount end
    if retry_after > 0 then
      -- -(retry_after * num / den) micro-units, rounded away from zero.
      local debt = -math.ceil(retry_after / d.den * d.num)
      if debt < target then target = debt end
    end
    if target < level then
      lowered = lowered + 1
      redis.call('HSET', scope.state, d.name, encode(target, 0, d.den, now))
      extend_ttl(scope.state, wait_for(target, 0, d.cap, d.num, d.den) / 1000 + 1)
    end
  end
end
return { now, lowered }
