"""Application Auto Scaling calls: who owns the service's desiredCount, and the scalable
target and scaling policies the TargetTracking / StepScaling modes manage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect_workpool_operator.core import aws_scaling
from prefect_workpool_operator.core.aws_scaling import service_name as _name
from prefect_workpool_operator.aws.transport import AwsTransport

SCALABLE_DIMENSION = aws_scaling.DIMENSION


def _ids(resource_id: str) -> dict[str, str]:
    return {"ServiceNamespace": aws_scaling.NAMESPACE, "ResourceId": resource_id,
            "ScalableDimension": aws_scaling.DIMENSION}


class AutoScalingCalls(AwsTransport):
    async def scalable_target(self, cluster: str, service: str) -> bool:
        """Whether Application Auto Scaling owns the service's desiredCount (one call)."""
        return await self.read_target(service_resource_id(cluster, service)) is not None

    async def read_target(self, resource_id: str) -> aws_scaling.Target | None:
        answer = await self._call("application-autoscaling", "describe_scalable_targets", {
            "ServiceNamespace": aws_scaling.NAMESPACE, "ResourceIds": [resource_id],
            "ScalableDimension": aws_scaling.DIMENSION})
        for t in answer.get("ScalableTargets") or []:
            return aws_scaling.Target(resource_id, int(t.get("MinCapacity") or 0), int(t.get("MaxCapacity") or 0))
        return None

    async def read_policies(self, resource_id: str) -> tuple[aws_scaling.Policy, ...]:
        answer = await self._call("application-autoscaling", "describe_scaling_policies", _ids(resource_id))
        policies = []
        for p in answer.get("ScalingPolicies") or []:
            kind = str(p.get("PolicyType") or "")
            config = p.get("TargetTrackingScalingPolicyConfiguration") if kind == aws_scaling.TARGET_TRACKING else \
                p.get("StepScalingPolicyConfiguration")
            policies.append(aws_scaling.Policy(str(p.get("PolicyName")), kind, config or {},
                                               str(p.get("PolicyARN") or ""),
                                               tuple(str(a.get("AlarmName")) for a in p.get("Alarms") or [])))
        return tuple(policies)

    async def read_activity(self, resource_id: str) -> str | None:
        """The last scaling activity, as one line."""
        answer = await self._call("application-autoscaling", "describe_scaling_activities",
                                  {**_ids(resource_id), "MaxResults": 1})
        for a in answer.get("ScalingActivities") or []:
            when = a.get("StartTime")
            stamp = when.isoformat() if isinstance(when, datetime) else str(when or "")
            return f"{stamp} {a.get('StatusCode', '')}: {a.get('Description', '')}"[:1000]
        return None

    async def register_target(self, target: aws_scaling.Target, *, owner: str | None = None) -> None:
        """RegisterScalableTarget; ``owner`` tags a target the operator creates (for people)."""
        params: dict[str, Any] = {**_ids(target.resource_id), "MinCapacity": target.min_capacity,
                                  "MaxCapacity": target.max_capacity}
        if owner is not None:
            params["Tags"] = {aws_scaling.OWNER_TAG: owner}
        await self._call("application-autoscaling", "register_scalable_target", params)

    async def put_policy(self, resource_id: str, policy: aws_scaling.Policy) -> tuple[str, tuple[str, ...]]:
        """PutScalingPolicy: the policy's ARN and the alarms AWS attached (target tracking's own)."""
        field = "TargetTrackingScalingPolicyConfiguration" if policy.type == aws_scaling.TARGET_TRACKING else \
            "StepScalingPolicyConfiguration"
        answer = await self._call("application-autoscaling", "put_scaling_policy", {
            **_ids(resource_id), "PolicyName": policy.name, "PolicyType": policy.type, field: dict(policy.config)})
        return str(answer.get("PolicyARN") or ""), tuple(str(a.get("AlarmName")) for a in answer.get("Alarms") or [])

    async def delete_policy(self, resource_id: str, name: str) -> None:
        await self._call("application-autoscaling", "delete_scaling_policy", {**_ids(resource_id), "PolicyName": name})

    async def deregister_target(self, resource_id: str) -> None:
        await self._call("application-autoscaling", "deregister_scalable_target", _ids(resource_id))


def service_resource_id(cluster: str, service: str) -> str:
    """``service/<cluster>/<service>``: Application Auto Scaling resource ids use names, not ARNs."""
    return aws_scaling.resource_id(_name(cluster), _name(service))
