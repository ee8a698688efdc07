-- lib/msgpack.lua: msgpack, as much as a ledger record needs (Redis has
-- cmsgpack, fakeredis does not): strings, integers in [0, 2^53) and values
-- the client encoded.

local function mp_str(v)
  local n = #v
  if n < 32 then return string.char(0xa0 + n) .. v end
  if n < 256 then return string.char(0xd9, n) .. v end
  if n < 65536 then return string.char(0xda, math.floor(n / 256), n % 256) .. v end
  return string.char(0xdb, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. v
end

-- A positive fixint below 128, else a uint 64 (as the client's readers have
-- always been given), its two 32-bit halves split with four divisions.
local function mp_uint(x)
  if x < 128 then return string.char(x) end
  local floor = math.floor
  local hi = floor(x / 4294967296)
  local lo = x - hi * 4294967296
  local h1, l1 = floor(hi / 16777216), floor(lo / 16777216)
  local h2, l2 = floor(hi / 65536) % 256, floor(lo / 65536) % 256
  local h3, l3 = floor(hi / 256) % 256, floor(lo / 256) % 256
  return string.char(0xcf, h1, h2, h3, hi % 256, l1, l2, l3, lo % 256)
end
