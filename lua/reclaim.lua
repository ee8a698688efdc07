-- reclaim.lua: end the permits whose lease ended without a settle (a crashed
-- worker's), a batch at a time. Their rate buckets keep what they took; each
-- budget reservation is charged in full, with a "reclaimed" ledger entry
-- (lib/reclaim.lua says why). acquire.lua asks for this (status -3) before
-- it admits anything while such permits hold reservations.
-- lib: clock bucket args budget alerts msgpack ledger permit finish reclaim
--
-- KEYS[1]  permits hash, KEYS[2] leases sorted set, then the scopes' keys
--          (lib/args.lua)
-- ARGV[1..] the scope block (lib/args.lua); amounts are ignored
-- Reply    {1, now_us, notes, more}: more = 1 while expired permits remain
--          after this batch; {-2, now_us, false}: the budget periods sent
--          do not hold now_us. notes (lib/args.lua): alerts the charges
--          crossed.

local scopes = read_scopes(1, 3)
local now = now_us()
if not periods_hold(scopes, now) then return { -2, now, false } end
local out = { alerts = {}, overshoots = {}, events = {} }
reclaim_expired(scopes, now, out)
local more = 0
if redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 1)[1] then more = 1 end
return { 1, now, notes(out.alerts, out.events), more }
