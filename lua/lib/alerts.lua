-- lib/alerts.lua: each alert threshold fires exactly once per period, from
-- the one script call whose spend reaches it.

-- Report every alert threshold the spend has now reached for the first time
-- this period: into the reply, the scope's alerts stream and its channel.
-- A PUBLISH the server refuses (an ACL user without channel permission)
-- cannot undo what the script already wrote: it is reported as a
-- "publish_denied" event instead of failing the call, and the alert still
-- reaches the stream and the caller.
local function check_alerts(scope, now, out)
  local b, st = scope.budget, scope.budget.st
  -- Thresholds come in ascending order: the first the spend is under ends it
  -- (most calls: the lowest).
  local lowest = string.match(b.alerts, '^%d+:(%d+)')
  if not lowest or st.spent < tonumber(lowest) then return end
  local fired = tonumber(st.fired)
  for ppm, nano in string.gmatch(b.alerts, '(%d+):(%d+)') do
    if st.spent < tonumber(nano) then break end
    ppm = tonumber(ppm)
    if ppm > fired then
      fired, st.fired = ppm, string.format('%d', ppm)
      local spent, limit = string.format('%d', st.spent), string.format('%d', b.limit)
      out.alerts[#out.alerts + 1] = { scope.j, ppm, spent, limit, st.label }
      redis.call('XADD', scope.alerts, 'MAXLEN', '~', 1000, '*', 'scope', scope.name,
        'threshold_ppm', ppm, 'spent', spent, 'limit', limit, 'period', st.label,
        't', string.format('%d', now))
      if b.channel ~= '' then
        local sent = redis.pcall('PUBLISH', b.channel, table.concat(
          { scope.name, ppm, spent, limit, st.label, string.format('%d', now) }, '\t'))
        if type(sent) == 'table' and sent.err then
          out.events[#out.events + 1] = { 'publish_denied', scope.j, sent.err }
        end
      end
    end
  end
end
