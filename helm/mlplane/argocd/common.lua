-- Shared by every mlplane kind's Argo CD health check: the chart prepends it to the kind's
-- script, which defines judge(phase) and ends with `return not_observed() or judge(phase)`.
-- Argo CD runs the whole with `obj` set to the live object and reads {status, message}.

local function condition(type)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function message_of(type, fallback)
  local c = condition(type)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

-- Progressing until the operator has acted on the object as it is now: no phase yet, or a
-- status computed from an older spec (status.observedGeneration behind metadata.generation).
local function not_observed()
  if obj.status == nil or obj.status.phase == nil then
    return {status = "Progressing", message = "Waiting for the mlplane operator to pick it up"}
  end
  local generation = obj.metadata.generation
  local observed = obj.status.observedGeneration
  if generation ~= nil and (observed == nil or observed < generation) then
    return {
      status = "Progressing",
      message = "Waiting for the mlplane operator to observe generation " .. generation,
    }
  end
  return nil
end

