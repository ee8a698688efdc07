-- lib/permit.lua: what Redis remembers of a permit in flight.

-- Permit records: "<admit_us>\n<j>:<dim>:<amount> ...\n<model>\n<#tokens>\n<tokens><tags>"
-- (a budget amount's dim is written "$<dim>"; tokens and tags are the
-- client's msgpack blobs, split by the length of the first). encode_record
-- takes admit_us as text.
local function encode_record(admit, parts, model, tokens, tags)
  local n = #tokens -- mostly one byte, an empty map: no number to format then
  n = n < 10 and string.sub('0123456789', n + 1, n + 1) or string.format('%d', n)
  return admit .. '\n' .. table.concat(parts, ' ') .. '\n' .. model ..
    '\n' .. n .. '\n' .. tokens .. tags
end

-- A permit record read back: its admission time, ledger labels and `parts`,
-- whose amounts record_amount reads (a settle needs one or two of them).
local function decode_record(record)
  local admit, parts, model, n, rest = string.match(record,
    '^(%d+)\n([^\n]*)\n([^\n]*)\n(%d+)\n(.*)$')
  n = tonumber(n)
  return { admit = tonumber(admit), parts = ' ' .. parts, model = model,
    tokens = string.sub(rest, 1, n), tags = string.sub(rest, n + 1) }
end

-- What a permit reserved on `key` ("<j>:<dim>", or "<j>:$<dim>" for a
-- budget), or nil.
local function record_amount(rec, key)
  local at = string.find(rec.parts, ' ' .. key .. ':', 1, true)
  if not at then return nil end
  return tonumber(string.match(rec.parts, '^%d+', at + #key + 2))
end
