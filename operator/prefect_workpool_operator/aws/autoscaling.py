"""Application Auto Scaling calls: does another controller own the service's desiredCount?"""

from __future__ import annotations

from .transport import AwsTransport

SCALABLE_DIMENSION = "ecs:service:DesiredCount"


class AutoScalingCalls(AwsTransport):
    async def scalable_target(self, cluster: str, service: str) -> bool:
        """Whether Application Auto Scaling owns the service's desiredCount (one call)."""
        answer = await self._call("application-autoscaling", "describe_scalable_targets", {
            "ServiceNamespace": "ecs",
            "ResourceIds": [service_resource_id(cluster, service)],
            "ScalableDimension": SCALABLE_DIMENSION,
        })
        return bool(answer.get("ScalableTargets"))


def service_resource_id(cluster: str, service: str) -> str:
    """``service/<cluster>/<service>``: Application Auto Scaling resource ids use names, not ARNs."""
    return f"service/{_name(cluster)}/{_name(service)}"


def _name(name_or_arn: str) -> str:
    return name_or_arn.rsplit("/", 1)[-1] if name_or_arn.startswith("arn:") else name_or_arn
