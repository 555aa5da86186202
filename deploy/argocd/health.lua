-- Argo CD health check for prefectops.dev/PrefectWorkPoolPolicy (docs/argocd.md).
-- Argo CD runs it (gopher-lua, Lua 5.1) with the live object as `obj`.
--   spec.suspend                                   -> Suspended
--   no status yet, or status of an older generation -> Progressing
--   Ready=False                                    -> Degraded (Ready's reason and message)
--   Ready=True, but what the spec asks is not met or is unsafe
--     (StaleRunsRecovered/Scaling/JobTemplateSynced/ConfigConsistent/
--      AwsConnected=False, except the reasons that mean "as asked") -> Degraded
--   Ready=True                                     -> Healthy
-- WorkPoolReady=False (no worker online, pool paused) stays Healthy: the policy works,
-- the pool is what needs attention, and an idle pool scaled to zero is normal.
local hs = {}

local function find(conditions, wanted)
  for _, c in ipairs(conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.type .. "=" .. tostring(c.status)
  if c.reason ~= nil and c.reason ~= "" then
    text = text .. " " .. c.reason
  end
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

-- Conditions of what the spec asks for; False means the policy is not doing it (or, for
-- ConfigConsistent, is set up to do harm), unless the reason says it was asked not to act.
local FEATURES = {"StaleRunsRecovered", "Scaling", "JobTemplateSynced", "ConfigConsistent", "AwsConnected"}
local AS_ASKED = {DryRun = true, ReportOnly = true}

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: nothing is read from or written to Prefect"
  return hs
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the policy"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile generation " .. tostring(generation)
  return hs
end

local ready = find(status.conditions, "Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status ~= "True" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

for _, name in ipairs(FEATURES) do
  local c = find(status.conditions, name)
  if c ~= nil and c.status == "False" and not AS_ASKED[c.reason] then
    hs.status = "Degraded"
    hs.message = describe(c)
    return hs
  end
end

hs.status = "Healthy"
hs.message = ready.message or ""
local pool = find(status.conditions, "WorkPoolReady")
if pool ~= nil and pool.status == "False" then
  hs.message = hs.message .. " (" .. describe(pool) .. ")"
end
return hs
