-- lib/clock.lua: Redis is the clock. Every script reads TIME; no client clock
-- decides anything.

-- Redis server time in microseconds (below 2^53, exact as a double).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
