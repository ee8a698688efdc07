-- lib/lower.lua: provider feedback. The provider's own figures can only
-- lower a shared bucket, never raise it (they may be stale on arrival).

-- Bring a rate bucket down to what the provider says is left (`remaining`
-- micro-units, -1 = no figure), and with `retry_after` > 0 hold it empty
-- until that long from now. Never raises a bucket. Returns 1 if lowered.
local function lower_bucket(scope, d, remaining, retry_after, now)
  local level, rem, at = bucket_at(decode(redis.call('HGET', scope.state, d.name)), d.cap,
    d.num, d.den, now)
  local new_level, new_rem, new_at = level, rem, at
  if remaining >= 0 and remaining < new_level then new_level, new_rem = remaining, 0 end
  if retry_after > 0 and new_at < now + retry_after then
    -- Nobody goes before now + retry_after, and the bucket is empty then.
    new_at = now + retry_after
    new_level, new_rem = refill({ new_level, new_rem, d.den, at }, d.cap, d.num, d.den, new_at)
    if new_level > 0 then new_level, new_rem = 0, 0 end
  end
  if new_at == at and new_level >= level then return 0 end
  redis.call('HSET', scope.state, d.name, encode(new_level, new_rem, d.den, new_at))
  extend_ttl(scope.state, (new_at - now + wait_for(new_level, new_rem, d.cap, d.num, d.den)) / 1000
    + 1)
  return 1
end
