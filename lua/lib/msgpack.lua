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

local function mp_uint(x)
  if x < 128 then return string.char(x) end
  local bytes = {}
  for i = 8, 1, -1 do
    bytes[i] = x % 256
    x = math.floor(x / 256)
  end
  return string.char(0xcf, unpack(bytes))
end

-- A map from a flat list key1, encoded1, key2, encoded2, ... (at most 15 pairs).
local function mp_map(kv)
  local out = { string.char(0x80 + #kv / 2) }
  for i = 1, #kv, 2 do
    out[#out + 1] = mp_str(kv[i])
    out[#out + 1] = kv[i + 1]
  end
  return table.concat(out)
end
