"""Scaling's backlog (lookahead, per queue), what the publishing modes send to CloudWatch,
and the Application Auto Scaling writes of TargetTracking / StepScaling, as one cycle's plan.

Pure: ``backlog_view`` and ``publication`` turn what observe read into the backlog scaling
follows and the series to publish; ``plan_managed`` / ``plan_release`` turn the managed
resources observe read (``aws_scaling.Reading``) into the writes act makes; ``settle_managed``
says what those writes did (condition, figures, Events).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from prefect_workpool_operator.schema.models import EcsTarget, ScalingSpec
from prefect_workpool_operator.core import aws_scaling, queue_backlog, scaling
from prefect_workpool_operator.core.conditions import Condition, format_time
from prefect_workpool_operator.core.health import PoolObservation

METRIC_PUBLISHED = "MetricPublished"


@dataclass(frozen=True)
class BacklogView:
    backlog: scaling.Backlog  # what scaling follows (scaling.workQueues, else the observed scope)
    size: int
    pool_size: int  # the pool's (observed scope's) backlog: the WorkPool series
    queue_sizes: Mapping[str, int] | None
    figures: Mapping[str, Any]


@dataclass(frozen=True)
class Publication:
    condition: Condition
    figures: Mapping[str, Any]
    series: tuple[queue_backlog.Series, ...]
    last: Mapping[str, Any] | None  # the datum figure to remember (its time moves only with its value)


@dataclass(frozen=True)
class ManagedStep:
    """Writes to Application Auto Scaling / CloudWatch alarms, and how to report them."""

    reading: aws_scaling.Reading
    actions: tuple[aws_scaling.Action, ...]
    desired: aws_scaling.Desired | None = None  # None: remove what is ours
    published: str = ""  # the publication's message, which the Scaling condition repeats
    note: str = ""  # the TargetTracking minimum, an override


def needs_queues(spec: ScalingSpec) -> bool:
    return bool(spec.work_queues) or (spec.publishes and spec.per_queue_metrics)


def backlog_view(spec: ScalingSpec, pool: PoolObservation, reading: queue_backlog.BacklogReading | None) -> BacklogView:
    upcoming = reading.upcoming if reading is not None else 0
    pool_backlog = scaling.Backlog(late=pool.late, pending=pool.pending, workers_online=pool.workers_online,
                                   upcoming=upcoming)
    followed = pool_backlog
    sizes = None
    if reading is not None and reading.queues is not None:
        sizes = queue_backlog.queue_sizes(reading.queues, spec.include_pending)
        if spec.work_queues:
            followed = queue_backlog.scoped_backlog(reading.queues, spec.work_queues, pool.workers_online)
    size = scaling.backlog_size(followed, spec.include_pending)
    figures: dict[str, Any] = {"backlog": size}
    if spec.lookahead_delta:
        figures["upcoming"] = followed.upcoming
    if sizes is not None:
        figures["queues"] = [{"name": name, "backlog": value} for name, value in sizes.items()][:200]
    return BacklogView(followed, size, scaling.backlog_size(pool_backlog, spec.include_pending), sizes, figures)


def publication(spec: ScalingSpec, pool: str, view: BacklogView, last: Mapping[str, Any] | None, *, dry_run: bool,
                now: datetime) -> Publication:
    """The pool's series and one per queue, in one PutMetricData (act splits past 1,000)."""
    series = tuple(queue_backlog.backlog_series(pool, view.pool_size,
                                                view.queue_sizes if spec.per_queue_metrics else None))
    where = f"{spec.metric_namespace}/{spec.metric_name} (WorkPool={pool})"
    extra = f" and {len(series) - 1} queue series" if len(series) > 1 else ""
    if dry_run:
        return Publication(Condition(scaling.SCALING, "True", "DryRun",
                                     f"dryRun: would publish {view.pool_size} to {where}{extra}."), {}, series, last)
    datum: Mapping[str, Any] = {"time": format_time(now), "value": view.pool_size, "metric": where,
                                "series": len(series)}
    if last is not None and {**last, "time": datum["time"]} == datum:
        datum = last  # an unchanged backlog does not rewrite the status every cycle
    return Publication(Condition(scaling.SCALING, "True", METRIC_PUBLISHED,
                                 f"Published backlog {view.pool_size} to {where}{extra}."),
                       {"published": datum}, series, datum)


def plan_managed(spec: ScalingSpec, ecs: EcsTarget, reading: aws_scaling.Reading, published: Publication, *,
                 pool: str, dry_run: bool) -> tuple[Condition, Mapping[str, Any], ManagedStep | None]:
    """TargetTracking / StepScaling: the writes that bring AWS to the spec, or the conflict.
    Returns the condition (final unless there are writes), the figures, and the writes."""
    desired = aws_scaling.desired_resources(aws_scaling.inputs_from(spec, ecs, pool), reading.prefix)
    plan = aws_scaling.plan(desired, reading.observed, prefix=reading.prefix, owns_target=reading.owns_target,
                            on_conflict=spec.on_conflict)
    message = published.condition.message
    if plan.conflict and spec.on_conflict != "Override":
        return (Condition(scaling.SCALING, "False", aws_scaling.CONFLICT,
                          f"{plan.conflict[0].upper()}{plan.conflict[1:]}; onConflict is Hold, so the operator "
                          f"leaves Application Auto Scaling alone. {message}"),
                {"autoscaling": aws_scaling.figures(reading, desired)}, None)
    note = f" {desired.note}" if desired.note else ""
    note += f" Overriding: {plan.conflict}." if plan.conflict else ""
    if dry_run:
        would = aws_scaling.summarize(plan.actions) or "nothing to change"
        return Condition(scaling.SCALING, "True", "DryRun", f"dryRun: {would}. {message}{note}"), {}, None
    step = ManagedStep(reading, plan.actions, desired, message, note)
    condition, figures, _ = settle_managed(step, (), reading)
    return condition, figures, step


def plan_release(reading: aws_scaling.Reading | None, *, dry_run: bool) -> ManagedStep | None:
    """The mode switched away or scaling was removed: remove what is ours (only that)."""
    if reading is None or not reading.managed or dry_run:
        return None
    plan = aws_scaling.plan(None, reading.observed, prefix=reading.prefix, owns_target=reading.owns_target)
    return ManagedStep(reading, plan.actions)


def settle_managed(step: ManagedStep, done: tuple[aws_scaling.Action, ...], after: aws_scaling.Reading,
                   ) -> tuple[Condition | None, dict[str, Any], list[tuple[str, str, str]]]:
    """What the writes did: the Scaling condition (None for a removal), figures, Events."""
    if step.desired is None:
        return None, {}, aws_scaling.events(done)
    figures = {"autoscaling": aws_scaling.figures(after, step.desired)}
    if not done:
        return (Condition(scaling.SCALING, "True", aws_scaling.AUTOSCALING_READY,
                          f"{step.published} {aws_scaling.declared(step.desired)} as declared.{step.note}"),
                figures, [])
    return (Condition(scaling.SCALING, "True", aws_scaling.AUTOSCALING_CHANGED,
                      f"{step.published} {aws_scaling.summarize(done)}.{step.note}"),
            figures, aws_scaling.events(done))
