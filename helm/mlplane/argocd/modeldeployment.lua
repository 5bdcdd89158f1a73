-- ModelDeployment: serves for as long as it exists; Healthy once Available and Ready.
local function judge(phase)
  local ready = condition("Ready")
  if phase == "Available" and ready ~= nil and ready.status == "True" then
    return {status = "Healthy", message = message_of("Ready", "Available")}
  elseif phase == "Degraded" or phase == "Failed" then
    return {status = "Degraded", message = message_of("Progressing", phase)}
  elseif phase == "RollingBack" then
    -- A canary broke its guard: the stable model still serves, but the rollout failed.
    return {status = "Degraded", message = message_of("Progressing", "Rolling back the canary")}
  end
  -- Deploying, Progressing (a canary stepping, a new version rolling out), and an Available
  -- phase whose Ready condition does not agree yet.
  return {status = "Progressing", message = message_of("Progressing", phase)}
end

return not_observed() or judge(obj.status.phase)
