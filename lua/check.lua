-- check.lua: the commands the limiter's scripts run that this Redis user may
-- not run on these keys (Redis 7 ACL), checked once before a client's first
-- admission so that a missing permission is reported, not half-applied.
--
-- KEYS     a scope's keys: rates, budget, permits, leases, ledger, spend,
--          alerts, and a settle marker (lib/args.lua)
-- ARGV[1]  the alert channel
-- Reply    {"?"} when this server cannot tell (no redis.acl_check_cmd);
--          else the denied commands, e.g. {"XADD <ledger key>", ...} ({}:
--          every one allowed). PUBLISH denied is reported as "PUBLISH":
--          alerts then still reach the alerts stream and the caller.

if not redis.acl_check_cmd then return { '?' } end
local rates, budget, permits, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ledger, spend, alerts, marker = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local denied = {}
local function need(...)
  local ok, allowed = pcall(redis.acl_check_cmd, ...)
  if not ok or not allowed then denied[#denied + 1] = table.concat({ ... }, ' ') end
end
need('TIME')
need('GET', rates)
need('SET', rates, '1', 'PX', '1')
need('DEL', rates)
need('GET', budget)
need('SET', budget, '1')
need('HGET', permits, 'f')
need('HSET', permits, 'f', '1')
need('HDEL', permits, 'f')
need('ZADD', leases, '1', 'm')
need('ZREM', leases, 'm')
need('ZRANGEBYSCORE', leases, '-inf', '1', 'LIMIT', '0', '1')
need('XADD', ledger, '*', 'f', '1')
need('XRANGE', ledger, '-', '+')
need('HINCRBY', spend, 'f', '1')
need('HGETALL', spend)
need('XADD', alerts, '*', 'f', '1')
need('XRANGE', alerts, '-', '+')
need('SET', marker, '1', 'NX', 'PX', '1')
if ARGV[1] ~= '' and not redis.acl_check_cmd('PUBLISH', ARGV[1], 'm') then
  denied[#denied + 1] = 'PUBLISH'
end
return denied
