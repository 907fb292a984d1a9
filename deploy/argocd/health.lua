-- Argo CD health check for tenancy.dev/TenantMigration.
-- Install: argocd-cm, key resource.customizations.health.tenancy.dev_TenantMigration
-- (see the README). Maps status.phase: Succeeded -> Healthy, Failed -> Degraded,
-- Suspended -> Suspended, Pending/Running/none -> Progressing; a status older than the
-- spec (observedGeneration < generation) is Progressing until the controller catches up.
local hs = { status = "Progressing", message = "Waiting for the controller" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the controller to observe generation " .. generation
  return hs
end
local message = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.status == "True" and c.message ~= nil and c.message ~= "" then
      message = c.message
    end
  end
  if message == nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.message ~= nil and c.message ~= "" then
        message = c.message
      end
    end
  end
end
local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = message or ("Phase " .. tostring(phase) .. (obj.status.progress and (", " .. obj.status.progress) or ""))
return hs
