-- lib/permit.lua: what Redis remembers of a permit in flight.

-- Permit records: "<admit_us>\n<j>:<dim>:<amount> ...\n<model>\n<#tokens>\n<tokens><tags>"
-- (a budget amount's dim is written "$<dim>"; tokens and tags are the
-- client's msgpack blobs, split by the length of the first).
local function encode_record(admit, parts, model, tokens, tags)
  return string.format('%d', admit) .. '\n' .. table.concat(parts, ' ') .. '\n' .. model ..
    '\n' .. #tokens .. '\n' .. tokens .. tags
end

local function decode_record(record)
  local admit, parts, model, n, rest = string.match(record,
    '^(%d+)\n([^\n]*)\n([^\n]*)\n(%d+)\n(.*)$')
  local amounts = {}
  for key, amount in string.gmatch(parts, '(%d+:%$?[%w_]+):(%d+)') do
    amounts[key] = tonumber(amount)
  end
  n = tonumber(n)
  return { admit = tonumber(admit), amounts = amounts, model = model,
    tokens = string.sub(rest, 1, n), tags = string.sub(rest, n + 1) }
end
