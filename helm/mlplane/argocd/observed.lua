-- GPUQuota and NodePool: Healthy once the operator has written the status of the object as it
-- is now; its message is the summary `kubectl get gpuquotas` and `kubectl get nodepools` show.
local generation = obj.metadata.generation
local observed = obj.status ~= nil and obj.status.observedGeneration or nil
if observed == nil then
  return {status = "Progressing", message = "Waiting for the mlplane operator to pick it up"}
end
if generation ~= nil and observed < generation then
  return {
    status = "Progressing",
    message = "Waiting for the mlplane operator to observe generation " .. generation,
  }
end
return {status = "Healthy", message = obj.status.summary or ""}
