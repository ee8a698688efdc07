-- lib/lower.lua: provider feedback. The provider's own figures can only
-- lower a shared bucket, never raise it (they may be stale on arrival).

-- Bring dimension d's bucket down to what the provider says is left
-- (`remaining` micro-units, -1 = no figure), and with `retry_after` > 0 hold
-- it empty until that long from now. Never raises it. Returns true if lowered.
local function lower_bucket(d, remaining, retry_after, now)
  local level, rem, at = bucket_at(d, now)
  local new_level, new_rem, new_at = level, rem, at
  if remaining >= 0 and remaining < new_level then new_level, new_rem = remaining, 0 end
  if retry_after > 0 and new_at < now + retry_after then
    -- Nobody goes before now + retry_after, and the bucket is empty then.
    new_at = now + retry_after
    new_level, new_rem = refill(d, new_level, new_rem, d.den, at, new_at)
    if new_level > 0 then new_level, new_rem = 0, 0 end
  end
  if new_at == at and new_level >= level then return false end
  set_bucket(d, new_level, new_rem, new_at)
  return true
end

-- Lower the buckets of `scopes` to the provider's figures, given as
-- "<j>:<dim>:<micro-units> ..." (as a settle sends them). Returns the set
-- of scopes changed, by j.
local function lower_to(scopes, figures, now)
  local changed = {}
  if figures == '' then return changed end
  local left = {}
  for key, micro in string.gmatch(figures, '(%d+:[%w_]+):(%d+)') do left[key] = tonumber(micro) end
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(scope.rates) do
      local figure = left[scope.jt .. ':' .. d.name]
      if figure and lower_bucket(d, figure, 0, now) then changed[scope.j] = true end
    end
  end
  return changed
end
