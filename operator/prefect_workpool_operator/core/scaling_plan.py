"""Worker scaling as one cycle's plan: from the backlog and the ECS service to a change.

``core.scaling`` decides the count; this module picks what the cycle writes
(UpdateService, or PutMetricData in CloudWatchMetric mode) and what the Scaling and
AwsConnected conditions say before and after that write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from prefect_workpool_operator.schema.models import EcsTarget, ScalingSpec
from prefect_workpool_operator.core import aws_scaling, queue_backlog, scaling
from prefect_workpool_operator.core.autoscaling_plan import ManagedStep, backlog_view, plan_managed, plan_release, publication
from prefect_workpool_operator.core.conditions import Condition, format_time
from prefect_workpool_operator.core.durations import parse_duration
from prefect_workpool_operator.core.health import Failure, PoolObservation

AWS_CONNECTED = "AwsConnected"


@dataclass(frozen=True)
class EcsReading:
    """What this cycle learned from AWS before deciding."""

    region: str
    service: scaling.ServiceCounts | None = None  # None: no service named, or not asked (CloudWatchMetric)
    deployment_in_progress: bool = False
    autoscaling_target: bool = False
    autoscaling: aws_scaling.Reading | None = None  # the managed resources (managed modes, or ours left to remove)
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
    series: tuple[queue_backlog.Series, ...]  # the pool's, then one per queue


@dataclass(frozen=True)
class ScalingStep:
    condition: Condition | None  # None: AWS could not be asked at all (the credentials failed)
    figures: dict[str, Any] | None = None
    memory: scaling.ScalingMemory | None = None  # kept unless a change is applied
    change: ScaleChange | None = None
    metric: MetricDatum | None = None
    failure: Failure | None = None
    managed: ManagedStep | None = None  # Application Auto Scaling / alarm writes (or removals)
    published: Mapping[str, Any] | None = None  # the datum figure to remember


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
    *, pool_name: str, dry_run: bool, now: datetime, backlog_reading: queue_backlog.BacklogReading | None = None,
    published: Mapping[str, Any] | None = None,
) -> ScalingStep:
    view = backlog_view(spec, pool, backlog_reading)
    backlog = view.backlog
    release = None if spec.mode in aws_scaling.MANAGED_MODES else plan_release(reading.autoscaling, dry_run=dry_run)
    if spec.publishes:
        sent = publication(spec, pool_name, view, published, dry_run=dry_run, now=now)
        metric = None if dry_run else MetricDatum(spec.metric_namespace, spec.metric_name, sent.series)
        figures = {**view.figures, **sent.figures}
        if spec.mode == "CloudWatchMetric":
            return ScalingStep(sent.condition, figures, memory, metric=metric, managed=release, published=sent.last)
        if reading.read_failure is not None or reading.autoscaling is None:
            condition, failure = ecs_failed(reading.read_failure or Failure("AwsError", "no Application Auto "
                                                                             "Scaling reading"))
            return ScalingStep(condition, figures, memory, metric=metric, failure=failure, published=sent.last)
        condition, managed_figures, managed = plan_managed(spec, ecs, reading.autoscaling, sent, pool=pool_name,
                                                           dry_run=dry_run)
        return ScalingStep(condition, {**figures, **managed_figures}, memory, metric=metric, managed=managed,
                           published=sent.last)
    if reading.read_failure is not None:
        condition, failure = ecs_failed(reading.read_failure)
        return ScalingStep(condition, None, memory, failure=failure)

    # A scalable target the operator registered (and removes this cycle) is no rival.
    ours = reading.autoscaling is not None and reading.autoscaling.owns_target
    observed = scaling.ScalingObservation(backlog, reading.service, reading.deployment_in_progress,
                                          reading.autoscaling_target and not ours)
    decision = scaling.plan_scaling(observed, scaling_rules(spec), memory, on_conflict=spec.on_conflict, now=now)
    figures: dict[str, Any] = {**view.figures, "recommendation": decision.recommendation}
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
        return ScalingStep(condition, figures, decision.memory if decision.target is None else decision.memory_unapplied,
                           managed=release)
    assert ecs.service is not None and decision.current is not None  # DesiredCount mode needs a service (CEL)
    change = ScaleChange(ecs.cluster, ecs.service, decision.current, decision.target, decision.reason,
                         decision.message, decision.memory)
    return ScalingStep(scaling.scaling_condition(decision), figures, decision.memory_unapplied, change=change,
                       managed=release)


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
