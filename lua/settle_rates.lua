-- settle_rates.lua: end a permit of scopes without a budget, once: give back
-- what it did not use, or charge what it used beyond its reservation.
-- lib: clock bucket rates args lower
--
-- KEYS[1]  the permit's settle marker: set for the rest of its settle
--          window, so a second settle (a retry, another process) changes
--          nothing
-- KEYS[2..] per scope, its rates key (lib/args.lua)
-- ARGV[1]  admit_us: the permit's admission time (Redis time, from its acquire)
-- ARGV[2]  window_end_us: admit_us + lease; a settle after it changes nothing
-- ARGV[3]  what the provider says is left, "<j>:<dim>:<micro-units> ..."
--          ("" = no figures): those buckets are then brought down to it, as
--          observe.lua does
-- ARGV[4..] the scope block (lib/args.lua), amounts = reserved - actual per
--          dimension: positive gives back (after everyone already booked,
--          capped at capacity; a booking still in line with others after it
--          keeps its slot spent), negative is a debt
-- Reply    {1, now_us, notes}: applied; {0, now_us, false}: already settled
--          or cancelled, or past its window: nothing changed.

local admit, window_end, figures = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local scopes = read_scopes(4, 2)
local now = now_us()
if now > window_end then return { 0, now, false } end
local keep_ms = math.ceil((window_end - now) / 1000) + 1
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', keep_ms) then return { 0, now, false } end
local events = {}
for _, scope in ipairs(scopes) do
  -- A settle that gives back nothing and owes nothing leaves the buckets alone.
  local moves = figures ~= ''
  for _, d in ipairs(scope.rates) do moves = moves or d.amount ~= 0 end
  if moves then
    read_rates(scope, now, events)
    for _, d in ipairs(scope.rates) do
      if d.amount ~= 0 and credit(d, d.amount, admit, now) then scope.changed = true end
    end
  end
end
for j in pairs(lower_to(scopes, figures, now)) do scopes[j].changed = true end
for _, scope in ipairs(scopes) do
  if scope.changed then write_rates(scope, now) end
end
return { 1, now, notes({}, events) }
