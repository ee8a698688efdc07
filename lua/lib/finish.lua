-- lib/finish.lua: a permit's end (settle, cancel or reclaim) applied to its
-- buckets, its budget and the ledger.

-- Apply a permit's end: refund or charge its rate buckets (their scopes
-- read by lib/rates.lua; a changed scope is marked `changed` for the caller
-- to write), move its budget reservation into spend, write the ledger,
-- report alerts and overshoots into `out`. `actual(d, reserved)` gives each
-- dimension's final amount. The caller has checked that the budgets'
-- periods hold `now` (lib/budget.lua).
local function finish_permit(scopes, id, rec, actual, kind, model, tokens, tags, now, out)
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(scope.rates) do
      -- A dimension settled as reserved (amount -1) gets nothing back.
      if d.amount >= 0 then
        local reserved = record_amount(rec, scope.jt .. ':' .. d.name) or 0
        local back = reserved - actual(d, reserved)
        if back ~= 0 and credit(d, back, rec.admit, now) then scope.changed = true end
      end
    end
    local b = scope.budget
    local key = b and (scope.jt .. ':$' .. b.name)
    local reserved = b and record_amount(rec, key)
    if reserved then
      load_budget(scope, now, out.events)
      local cost = actual(b, reserved)
      b.st.reserved = math.max(0, b.st.reserved - reserved)
      b.st.spent = b.st.spent + cost
      if cost > reserved then out.overshoots[#out.overshoots + 1] = { scope.j, cost - reserved } end
      record_spend(scope, now, id, kind, cost, cost == b.amount and b.text or nil, model, tokens,
        tags)
      check_alerts(scope, now, out)
      save_budget(scope)
    end
  end
end
