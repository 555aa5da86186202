"""Worker scaling as one cycle's plan: from the backlog and the ECS service to a change.

``core.scaling`` decides the count; this module picks what the cycle writes
(UpdateService, or PutMetricData in CloudWatchMetric mode) and what the Scaling and
AwsConnected conditions say before and after that write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..models import EcsTarget, ScalingSpec
from . import scaling
from .conditions import Condition, format_time
from .durations import parse_duration
from .health import Failure, PoolObservation

AWS_CONNECTED = "AwsConnected"


@dataclass(frozen=True)
class EcsReading:
    """What this cycle learned from AWS before deciding."""

    region: str
    service: scaling.ServiceCounts | None = None  # None: no service named, or not asked (CloudWatchMetric)
    deployment_in_progress: bool = False
    autoscaling_target: bool = False
    credentials_failure: Failure | None = None  # the AWS keys' Secret could not be read: nothing was asked
    read_failure: Failure | None = None  # DescribeServices / DescribeScalableTargets failed


@dataclass(frozen=True)
class ScaleChange:
    cluster: str
    service: str
    current: int
    target: int
    reason: str
    message: str
    applied_memory: scaling.ScalingMemory  # kept once UpdateService went through


@dataclass(frozen=True)
class MetricDatum:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]
    value: int


@dataclass(frozen=True)
class ScalingStep:
    condition: Condition | None  # None: AWS could not be asked at all (the credentials failed)
    figures: dict[str, Any] | None = None
    memory: scaling.ScalingMemory | None = None  # kept unless a change is applied
    change: ScaleChange | None = None
    metric: MetricDatum | None = None
    failure: Failure | None = None


def scaling_rules(spec: ScalingSpec) -> scaling.ScalingRules:
    """The spec model holds the defaults; the rules only carry them into the decision."""
    return scaling.ScalingRules(
        min_workers=spec.min_workers,
        max_workers=spec.max_workers,
        backlog_per_worker=spec.backlog_per_worker,
        include_pending=spec.include_pending,
        max_step_up=spec.max_step_up,
        max_step_down=spec.max_step_down,
        scale_down_stabilization=parse_duration(spec.scale_down_stabilization),
        scale_up_cooldown=parse_duration(spec.scale_up_cooldown),
        scale_down_cooldown=parse_duration(spec.scale_down_cooldown),
    )


def holding(reason_text: str) -> Condition:
    """Data is missing this cycle: desiredCount stays where it is."""
    return Condition(scaling.SCALING, "Unknown", scaling.HOLDING, f"{reason_text}; desiredCount left unchanged.")


def ecs_failed(failure: Failure) -> tuple[Condition, Failure]:
    """ECS did not answer (a read or the write): hold, and the policy is not Ready."""
    return holding(f"ECS did not answer ({failure.reason})"), Failure(failure.reason, f"Scaling stopped: {failure.message}")


def plan_workers(
    spec: ScalingSpec, ecs: EcsTarget, pool: PoolObservation, reading: EcsReading, memory: scaling.ScalingMemory,
    *, pool_name: str, dry_run: bool, now: datetime,
) -> ScalingStep:
    backlog = scaling.Backlog(late=pool.late, pending=pool.pending, workers_online=pool.workers_online)
    size = scaling.backlog_size(backlog, spec.include_pending)
    if spec.mode == "CloudWatchMetric":
        where = f"{spec.metric_namespace}/{spec.metric_name} (WorkPool={pool_name})"
        if dry_run:
            return ScalingStep(Condition(scaling.SCALING, "True", "DryRun", f"dryRun: would publish {size} to {where}."),
                               {"backlog": size}, memory)
        return ScalingStep(Condition(scaling.SCALING, "True", "MetricPublished", f"Published backlog {size} to {where}."),
                           {"backlog": size}, memory,
                           metric=MetricDatum(spec.metric_namespace, spec.metric_name, (("WorkPool", pool_name),), size))
    if reading.read_failure is not None:
        condition, failure = ecs_failed(reading.read_failure)
        return ScalingStep(condition, None, memory, failure=failure)

    observed = scaling.ScalingObservation(backlog, reading.service, reading.deployment_in_progress,
                                          reading.autoscaling_target)
    decision = scaling.plan_scaling(observed, scaling_rules(spec), memory, on_conflict=spec.on_conflict, now=now)
    figures: dict[str, Any] = {"backlog": size, "recommendation": decision.recommendation}
    if reading.service is not None:
        figures.update(desired=reading.service.desired, running=reading.service.running,
                       pending=reading.service.pending)
    if decision.target is None or decision.target == decision.current or spec.mode == "Disabled" or dry_run:
        condition = scaling.scaling_condition(decision)
        if decision.target is not None and decision.target != decision.current:
            verb = "dryRun" if dry_run else "scaling.mode Disabled"
            condition = Condition(scaling.SCALING, "True", "DryRun" if dry_run else "ReportOnly",
                                  f"{verb}: would set desiredCount {decision.current} -> {decision.target}: "
                                  f"{decision.message}")
        return ScalingStep(condition, figures, decision.memory if decision.target is None else decision.memory_unapplied)
    assert ecs.service is not None and decision.current is not None  # DesiredCount mode needs a service (CEL)
    change = ScaleChange(ecs.cluster, ecs.service, decision.current, decision.target, decision.reason,
                         decision.message, decision.memory)
    return ScalingStep(scaling.scaling_condition(decision), figures, decision.memory_unapplied, change=change)


def scaled(step: ScalingStep, updated: scaling.ServiceCounts, now: datetime) -> dict[str, Any]:
    """The figures once UpdateService went through: the counts it answered, and the change."""
    assert step.change is not None and step.figures is not None
    change = step.change
    return {**step.figures, "desired": updated.desired, "running": updated.running, "pending": updated.pending,
            "lastChange": {"time": format_time(now), "from": change.current, "to": change.target,
                           "reason": change.reason}}


def aws_condition(region: str, failure: Failure | None) -> Condition:
    if failure is not None:
        return Condition(AWS_CONNECTED, "False", failure.reason, failure.message)
    return Condition(AWS_CONNECTED, "True", "Connected", f"AWS answered in {region}.")
