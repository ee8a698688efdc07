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
--          block is also held empty until that long from now, so no process
--          is admitted before then
-- Reply    {now_us, lowered}: lowered = how many buckets were brought down

local scopes, at = read_scopes(1)
local retry_after = tonumber(ARGV[at])
local now = now_us()
local lowered = 0
for _, scope in ipairs(scopes) do
  for _, d in ipairs(scope.rates) do
    local level, rem, at = bucket_at(decode(redis.call('HGET', scope.state, d.name)), d.cap,
      d.num, d.den, now)
    local new_level, new_rem, new_at = level, rem, at
    if d.amount >= 0 and d.amount < new_level then new_level, new_rem = d.amount, 0 end
    if retry_after > 0 and new_at < now + retry_after then
      -- Nobody goes before now + retry_after, and the bucket is empty then.
      new_at = now + retry_after
      new_level, new_rem = refill({ new_level, new_rem, d.den, at }, d.cap, d.num, d.den, new_at)
      if new_level > 0 then new_level, new_rem = 0, 0 end
    end
    if new_at ~= at or new_level < level then
      lowered = lowered + 1
      redis.call('HSET', scope.state, d.name, encode(new_level, new_rem, d.den, new_at))
      extend_ttl(scope.state,
        (new_at - now + wait_for(new_level, new_rem, d.cap, d.num, d.den)) / 1000 + 1)
    end
  end
end
return { now, lowered }
