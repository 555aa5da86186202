"""observe's reads of the Application Auto Scaling target, policies and alarms that the
TargetTracking / StepScaling modes manage (``core.aws_scaling``); what it keeps of
them between cycles is ``cycle.memory.AutoscalingCache``.

Call budget. The first cycle (and the one after a spec change) reads everything: the
scalable target, the policies on it, our alarms. After that a cycle makes one read, in
turn (target, policies, alarms, last scaling activity), and compares; with nothing to
correct it writes nothing. So the steady state is PutMetricData plus one read, and drift
is found within four cycles. What act writes it records in the cache as written (no read-back).
A policy that no longer wants these resources (mode switched, scaling removed, deletion)
gets one full read, so a removal finds everything of ours.
"""

from __future__ import annotations

import hashlib
import logging

from prefect_workpool_operator.aws import AwsClient, AwsError
from prefect_workpool_operator.core import aws_scaling
from prefect_workpool_operator.cycle.memory import AutoscalingCache
from prefect_workpool_operator.schema.models import EcsTarget, ScalingSpec

log = logging.getLogger(__name__)

ROTATION = ("target", "policies", "alarms", "activity")


def wants_reading(spec: ScalingSpec | None, ecs: EcsTarget, cache: AutoscalingCache) -> bool:
    """A managed mode, or resources of ours that another mode (or none) must remove."""
    if not ecs.service:
        return False
    return (spec is not None and spec.mode in aws_scaling.MANAGED_MODES) or cache.managed


async def read_managed(aws: AwsClient, spec: ScalingSpec | None, ecs: EcsTarget, cache: AutoscalingCache, *,
                       pool: str) -> aws_scaling.Reading:
    """Everything on a new spec (or for a removal); otherwise the next kind in turn. Raises ``AwsError``."""
    assert ecs.service is not None
    rid = aws_scaling.resource_id(aws_scaling.service_name(ecs.cluster), aws_scaling.service_name(ecs.service))
    cache.resource_id = rid
    if spec is not None and spec.mode in aws_scaling.MANAGED_MODES:
        inputs = aws_scaling.inputs_from(spec, ecs, pool)
        key = hashlib.sha256(repr((inputs, spec.on_conflict)).encode()).hexdigest()
    else:
        key = "release"
    if cache.key != key or key == "release":
        cache.target = await aws.read_target(rid)
        cache.policies = await aws.read_policies(rid)
        cache.alarms = await aws.read_alarms(cache.prefix, _named(cache), by_prefix=True)
        cache.key = key
        return cache.reading()
    rotation = ROTATION[:-1] if cache.activity_unsupported else ROTATION
    kind = rotation[cache.turn % len(rotation)]
    cache.turn += 1
    if kind == "target":
        cache.target = await aws.read_target(rid)
    elif kind == "policies":
        cache.policies = await aws.read_policies(rid)
    elif kind == "alarms":
        cache.alarms = await aws.read_alarms(cache.prefix, _named(cache), by_prefix=False)
    else:
        before = aws.last_error
        try:
            cache.activity = await aws.read_activity(rid)
        except AwsError as exc:  # not every endpoint has it (moto): a status detail, not a failure
            aws.last_error = before
            cache.activity_unsupported = True
            log.info("DescribeScalingActivities failed (%s): the last scaling activity will not be reported",
                     exc.reason)
    return cache.reading()


def _named(cache: AutoscalingCache) -> list[str]:
    """The alarms our policies name (target tracking's own, or the step alarms)."""
    return sorted({a for p in cache.policies or () if aws_scaling.is_ours(p.name, cache.prefix) for a in p.alarms})
