"""The backlog scaling follows, and its CloudWatch series (every mode that publishes).

The pool observation already counts due (late) and PENDING runs; this adds the runs
due within ``scaling.lookahead`` and, when needed, the backlog per work queue
(``prefect_backlog``). Publishing sends the pool's series and one per queue in a
single PutMetricData. Nothing is published when Prefect could not be read: the caller
returns before calling ``publish`` (a missing datum, never a false zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import prefect_backlog
from .aws_api import AwsClient
from .core import queue_backlog, scaling
from .core.conditions import Condition, format_time
from .core.health import PoolObservation
from .models import ScalingSpec
from .prefect_api import PrefectClient

MAX_DATA_PER_PUT = 1000  # CloudWatch PutMetricData: at most 1,000 metric data per request
METRIC_PUBLISHED = "MetricPublished"


@dataclass
class BacklogMemory:
    queues_seen: set[str] = field(default_factory=set)  # a queue that drained still publishes its 0
    # The last datum's figure: its time moves only when the value does, so an unchanged
    # backlog does not rewrite the status every cycle.
    published: dict[str, Any] | None = None


@dataclass(frozen=True)
class BacklogView:
    backlog: scaling.Backlog  # what scaling follows (scaling.workQueues, else the observed scope)
    size: int
    pool_size: int  # the pool's (observed scope's) backlog: the WorkPool series
    queue_sizes: dict[str, int] | None
    figures: dict[str, Any]


@dataclass(frozen=True)
class Published:
    condition: Condition
    figures: dict[str, Any]
    series: tuple[queue_backlog.Series, ...]


def needs_queues(spec: ScalingSpec) -> bool:
    return bool(spec.work_queues) or (spec.publishes and spec.per_queue_metrics)


async def observe(prefect: PrefectClient | None, spec: ScalingSpec, observation: PoolObservation,
                  memory: BacklogMemory, *, pool: str, queues: tuple[str, ...], now: datetime) -> BacklogView:
    reading = prefect_backlog.BacklogReading(0, None)
    if prefect is not None:
        reading = await prefect_backlog.read_backlog(
            prefect, pool, list(queues), now, lookahead=spec.lookahead_delta, include_pending=spec.include_pending,
            per_queue=needs_queues(spec), known=memory.queues_seen | set(spec.work_queues))
    pool_backlog = scaling.Backlog(late=observation.late, pending=observation.pending,
                                   workers_online=observation.workers_online, upcoming=reading.upcoming)
    followed = pool_backlog
    sizes = None
    if reading.queues is not None:
        memory.queues_seen |= set(reading.queues)
        sizes = queue_backlog.queue_sizes(reading.queues, spec.include_pending)
        if spec.work_queues:
            followed = queue_backlog.scoped_backlog(reading.queues, spec.work_queues, observation.workers_online)
    size = scaling.backlog_size(followed, spec.include_pending)
    figures: dict[str, Any] = {"backlog": size}
    if spec.lookahead_delta:
        figures["upcoming"] = followed.upcoming
    if sizes is not None:
        figures["queues"] = [{"name": name, "backlog": value} for name, value in sizes.items()][:200]
    return BacklogView(followed, size, scaling.backlog_size(pool_backlog, spec.include_pending), sizes, figures)


async def publish(aws: AwsClient, spec: ScalingSpec, pool: str, view: BacklogView, *, dry_run: bool,
                  now: datetime, memory: BacklogMemory | None = None) -> Published:
    """One PutMetricData with every series (the pool's, then one per queue)."""
    series = queue_backlog.backlog_series(pool, view.pool_size, view.queue_sizes if spec.per_queue_metrics else None)
    where = f"{spec.metric_namespace}/{spec.metric_name} (WorkPool={pool})"
    extra = f" and {len(series) - 1} queue series" if len(series) > 1 else ""
    if dry_run:
        return Published(Condition(scaling.SCALING, "True", "DryRun",
                                   f"dryRun: would publish {view.pool_size} to {where}{extra}."), {}, tuple(series))
    for start in range(0, len(series), MAX_DATA_PER_PUT):
        await put_series(aws, spec.metric_namespace, spec.metric_name, series[start:start + MAX_DATA_PER_PUT])
    datum = {"time": format_time(now), "value": view.pool_size, "metric": where, "series": len(series)}
    last = memory.published if memory is not None else None
    if last is not None and {**last, "time": datum["time"]} == datum:
        datum = last
    if memory is not None:
        memory.published = datum
    figures = {"published": datum}
    return Published(Condition(scaling.SCALING, "True", METRIC_PUBLISHED,
                               f"Published backlog {view.pool_size} to {where}{extra}."), figures, tuple(series))


async def put_series(aws: AwsClient, namespace: str, metric_name: str, series: list[queue_backlog.Series]) -> None:
    data = [{"MetricName": metric_name, "Dimensions": [{"Name": k, "Value": v} for k, v in s.dimensions],
             "Value": float(s.value), "Unit": "Count"} for s in series]
    await aws._call("cloudwatch", "put_metric_data", {"Namespace": namespace, "MetricData": data})
