-- Argo CD health check for distillery.dev/DistilledModelDeployment.
-- Install in argocd-cm as resource.customizations.health.distillery.dev_DistilledModelDeployment.
-- Healthy: Ready=True for the current generation. Degraded: Stalled=True, or a rollout
-- rolled back. Suspended: scaled to zero with nothing asking for it (Ready=False,
-- ScaledToZero; demand at its router scales it up, and it is Progressing until a replica
-- serves). Progressing: a rollout under way (RolloutProgressing=True), and everything else.
local hs = {status = "Progressing", message = "waiting for the operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if obj.status.observedGeneration ~= nil and generation ~= nil
    and obj.status.observedGeneration < generation then
  hs.message = "the operator has not seen the latest spec yet"
  return hs
end
local ready, stalled, rollout
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then ready = c end
  if c.type == "Stalled" then stalled = c end
  if c.type == "RolloutProgressing" then rollout = c end
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
if rollout ~= nil and rollout.status == "False" and rollout.reason == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "rolled back: " .. (rollout.message or "")
  return hs
end
-- A canary or rolling update under way is Progressing even while every replica serves.
if rollout ~= nil and rollout.status == "True" then
  hs.message = (rollout.reason or "Rollout") .. ": " .. (rollout.message or "")
  return hs
end
if ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = ready.message or ""
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
end
return hs
