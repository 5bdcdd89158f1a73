-- TrainingJob and TuningSweep: a run that ends Succeeded (Healthy) or Failed (Degraded).
local function judge(phase)
  if phase == "Succeeded" then
    return {status = "Healthy", message = message_of("Complete", "Succeeded")}
  elseif phase == "Failed" then
    return {status = "Degraded", message = message_of("Failed", "Failed")}
  elseif phase == "Queued" then
    -- Waiting for GPU quota: nothing is wrong, and nothing moves until capacity frees up.
    return {status = "Suspended", message = message_of("Admitted", "Queued for GPUs")}
  elseif phase == "Running" then
    local progress = obj.status.progress
    if progress ~= nil and progress.of ~= nil and progress.of > 0 then
      return {status = "Progressing", message = "Running: " .. (progress.epoch or 0) .. " of " .. progress.of}
    end
    return {status = "Progressing", message = "Running"}
  end
  -- Pending, Starting, and any phase a newer operator may add.
  return {status = "Progressing", message = phase}
end

return not_observed() or judge(obj.status.phase)
