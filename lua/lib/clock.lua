-- lib/clock.lua: Redis is the clock. Every script reads TIME; no client clock
-- decides anything.

-- Redis server time in microseconds (below 2^53, exact as a double).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The same, and as text (what string.format('%d') would write, for less).
local function now_us_text()
  local t = redis.call('TIME')
  local micros = t[2]
  if #micros < 6 then micros = string.sub('00000' .. micros, -6) end
  return tonumber(t[1]) * 1000000 + tonumber(micros), t[1] .. micros
end
