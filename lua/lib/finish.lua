-- lib/finish.lua: a permit's end (settle, cancel or reclaim) applied to its
-- buckets, its budget and the ledger.

-- Debt past this would leave the exact range of doubles; no real quota gets near.
local FLOOR = -2251799813685248

-- Apply a permit's end: refund or charge its rate buckets (settle), move its
-- budget reservation into spend, write the ledger, report alerts and
-- overshoots. `actual(scope, dim, reserved)` gives each dimension's final
-- amount. Returns false when a budget's period could not be placed.
local function finish_permit(scopes, id, rec, actual, kind, model, tokens, tags, now, out)
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(scope.rates) do
      local reserved = rec.amounts[scope.j .. ':' .. d.name] or 0
      local back = reserved - actual(d, reserved)
      if back ~= 0 then
        local level, rem, at = bucket_at(decode(redis.call('HGET', scope.state, d.name)), d.cap,
          d.num, d.den, now)
        if back < 0 then
          -- Used more than reserved: a debt after everyone booked, so later callers wait.
          level = math.max(level + back, FLOOR)
        elseif rec.admit <= now or rec.admit >= at then
          -- The call went out (its unused part comes back after everyone
          -- already booked, as the provider's own bucket gives back an
          -- unused reservation), or nobody is booked after it: credited.
          level = level + back
          if level >= d.cap then level, rem = d.cap, 0 end
        else
          -- A booking still in line with others booked after it: those were
          -- timed without its units, and handing them to a newcomer would
          -- squeeze it in just before them, more than the provider's bucket
          -- holds (that call never reached the provider to be given back).
          -- The slot stays spent.
          back = 0
        end
        if back ~= 0 then
          redis.call('HSET', scope.state, d.name, encode(level, rem, d.den, at))
          extend_ttl(scope.state, (at - now + wait_for(level, rem, d.cap, d.num, d.den)) / 1000 + 1)
        end
      end
    end
    local b = scope.budget
    local key = b and (scope.j .. ':$' .. b.name)
    if b and rec.amounts[key] then
      if not load_budget(scope, now) then return false end
      local reserved = rec.amounts[key]
      local cost = actual(b, reserved)
      b.st.reserved = math.max(0, b.st.reserved - reserved)
      b.st.spent = b.st.spent + cost
      if cost > reserved then out.overshoots[#out.overshoots + 1] = { scope.j, cost - reserved } end
      record_spend(scope, now, id, kind, cost, model, tokens, tags)
      check_alerts(scope, now, out.alerts)
      save_budget(scope, now)
    end
  end
  return true
end
