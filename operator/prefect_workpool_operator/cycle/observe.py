"""observe: every read one cycle needs, into one immutable ``core.plan.Observation``.

Two phases, because recovery's per-run reads depend on the first phase's answers:

1. Prefect (work pool, workers, run counts; runs due soon and the backlog per queue when
   scaling asks) and AWS (the worker service, its Application Auto Scaling target; in the
   managed modes one read of their resources in turn, ``observe_autoscaling``) together. A Prefect failure cancels the AWS reads and ends the
   cycle's observation (fail static); an AWS failure is part of the observation.
2. Recovery: the stale candidates, then claims, requeue counts, claimers and ECS tasks
   for only the runs in the capped window (``recovery.observe_stale_runs``).

Both phases run under one deadline. The pool's type is known only once Prefect answers,
so the AWS reads assume the type seen last (ECS at first) and are dropped if it no
longer fits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import httpx

from prefect_workpool_operator.aws import AwsClient, AwsError, EcsInfrastructureCheck
from prefect_workpool_operator.cycle.clients import AwsConnection, PrefectConnection, aws_client_for, prefect_client_for
from prefect_workpool_operator.concurrent_reads import gather_or_cancel
from prefect_workpool_operator.core import freshness, health, pool_types, scaling
from prefect_workpool_operator.core.autoscaling_plan import needs_queues
from prefect_workpool_operator.core.queue_backlog import BacklogReading, QueueListing
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.core.health import Failure, PoolObservation
from prefect_workpool_operator.core.plan import Observation, StaleReading
from prefect_workpool_operator.core.scaling_plan import EcsReading
from prefect_workpool_operator.core.stale import Claimer
from prefect_workpool_operator.kube.api import SecretError, SecretReader
from prefect_workpool_operator.schema.models import PolicySpec
from prefect_workpool_operator.cycle.memory import AutoscalingCache, RecoveryMemory
from prefect_workpool_operator.cycle.observe_autoscaling import read_managed, wants_reading
from prefect_workpool_operator.prefect.backlog import read_backlog
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.rest import PrefectError
from prefect_workpool_operator.prefect.http import PrefectHttp
from prefect_workpool_operator.cycle.recovery import observe_stale_runs

AUTOSCALING_RECHECK = timedelta(minutes=10)  # an App Auto Scaling target rarely appears; don't ask every cycle
MIN_DEADLINE = timedelta(seconds=60)  # a short interval must not cut off a slow but working Prefect


@dataclass
class ReadCache:
    """What observe keeps between a policy's cycles to read less."""

    pool_type: str | None = None  # as Prefect last reported it
    autoscaling_target: bool = False
    autoscaling_checked_at: datetime | None = None
    recovery: RecoveryMemory = field(default_factory=RecoveryMemory)
    autoscaling: AutoscalingCache = field(default_factory=AutoscalingCache)  # the managed modes' AWS resources
    queues_seen: set[str] = field(default_factory=set)  # a queue that drained still publishes its 0
    # The last per-queue listing and what it was read under (the pool's counts version, …):
    # regrouped by the clock while no run of the pool changed (the event stream says so).
    backlog: tuple[Any, QueueListing | None] | None = None


@dataclass(frozen=True)
class Observed:
    """The observation, and the clients the act step writes through."""

    observation: Observation
    prefect: PrefectClient
    aws: AwsClient | None


async def observe_policy(
    spec: PolicySpec, *, namespace: str, generation: int | None, policy: str, created: datetime | None,
    secrets: SecretReader, http: httpx.AsyncClient | PrefectHttp, prefect: PrefectConnection, aws: AwsConnection,
    cache: ReadCache, now: datetime,
) -> Observed:
    """Raises ``OperatorError`` when Prefect (or its credentials) could not be read."""
    deadline = max(spec.interval_delta, MIN_DEADLINE).total_seconds()
    try:
        async with asyncio.timeout(deadline):
            return await _observe(spec, namespace=namespace, generation=generation, policy=policy, created=created,
                                  secrets=secrets, http=http, prefect=prefect, aws=aws, cache=cache, now=now)
    except TimeoutError:
        raise OperatorError(health.UNREACHABLE, f"The cycle's reads did not finish within {deadline:.0f}s.") from None


async def _observe(
    spec: PolicySpec, *, namespace: str, generation: int | None, policy: str, created: datetime | None,
    secrets: SecretReader, http: httpx.AsyncClient | PrefectHttp, prefect: PrefectConnection, aws: AwsConnection,
    cache: ReadCache, now: datetime,
) -> Observed:
    aws_wanted = spec.ecs is not None and pool_types.features_for(cache.pool_type).ecs
    reads = [_read_pool(spec, namespace, generation, secrets, http, prefect, cache, now)]
    if aws_wanted:
        reads.append(_read_ecs(spec, namespace, secrets, aws, cache, now))
    answers = await gather_or_cancel(*reads)
    client, pool, backlog = answers[0]
    cache.pool_type = pool.pool_type
    features = pool_types.features_for(pool.pool_type)
    aws_client, ecs = answers[1] if aws_wanted else (None, None)
    if spec.ecs is not None and features.ecs and not aws_wanted:
        aws_client, ecs = await _read_ecs(spec, namespace, secrets, aws, cache, now)
    if not features.ecs:
        aws_client, ecs = None, None

    reading = None
    if spec.stale_runs is not None and features.recovery:
        if aws_client is not None and spec.scaling is not None and spec.scaling.mode != "Disabled" \
                and not spec.dry_run and aws_client.budget.limit > 2:
            aws_client.budget.reserved = 1  # for UpdateService / PutMetricData in act
        reading = await _read_stale(spec, policy, client, aws_client, pool, cache, created, now)
    return Observed(Observation(pool, ecs, reading, backlog), client, aws_client)


async def _read_pool(
    spec: PolicySpec, namespace: str, generation: int | None, secrets: SecretReader,
    http: httpx.AsyncClient | PrefectHttp, prefect: PrefectConnection, cache: ReadCache, now: datetime,
) -> tuple[PrefectClient, PoolObservation, BacklogReading | None]:
    conn = spec.prefect
    client = await prefect_client_for(spec, namespace, secrets, http, prefect)
    if prefect.queues_checked_generation != generation:
        await client.check_queues(conn.work_pool, list(conn.work_queues))
        prefect.queues_checked_generation = generation
    scaling_spec = spec.scaling
    lookahead = scaling_spec.lookahead_delta if scaling_spec is not None else timedelta(0)
    pool = await client.observe_pool(conn.work_pool, list(conn.work_queues), now, lookahead=lookahead)
    backlog = None
    if scaling_spec is not None and (scaling_spec.lookahead_delta or needs_queues(scaling_spec)):
        # Runs due soon and the backlog per queue; a failure fails the observation (fail static).
        known = cache.queues_seen | set(scaling_spec.work_queues)
        version = client.counts_version(conn.work_pool, list(conn.work_queues))
        # The per-queue listing changes only when a run of the pool does (the cached counts are
        # read again: a new version); the clock's share (runs becoming due, the lookahead window)
        # is regrouped from it locally (prefect_backlog).
        under = (version, scaling_spec.include_pending, tuple(conn.work_queues), frozenset(known), lookahead)
        listing = cache.backlog[1] if version is not None and cache.backlog and cache.backlog[0] == under else None
        backlog, listing = await read_backlog(
            client, conn.work_pool, list(conn.work_queues), now, lookahead=lookahead,
            include_pending=scaling_spec.include_pending, per_queue=needs_queues(scaling_spec), known=known,
            listing=listing)
        cache.backlog = (under, listing)
        cache.queues_seen |= set(backlog.queues or ())
    return client, pool, backlog


async def _read_ecs(
    spec: PolicySpec, namespace: str, secrets: SecretReader, connection: AwsConnection, cache: ReadCache,
    now: datetime,
) -> tuple[AwsClient | None, EcsReading]:
    """The worker service and its scalable target; failures are part of the reading."""
    ecs = spec.ecs
    assert ecs is not None
    try:
        client = await aws_client_for(ecs, namespace, secrets, connection)
    except SecretError as exc:
        return None, EcsReading(ecs.region, credentials_failure=exc.as_failure())
    managed = None
    try:
        if wants_reading(spec.scaling, ecs, cache.autoscaling):
            managed = await read_managed(client, spec.scaling, ecs, cache.autoscaling, pool=spec.prefect.work_pool)
        if spec.scaling is None or spec.scaling.publishes or not ecs.service:
            return client, EcsReading(ecs.region, autoscaling=managed)
        state = await client.describe_service(ecs.cluster, ecs.service)
        if spec.scaling.mode == "DesiredCount":
            due = cache.autoscaling_checked_at is None or now - cache.autoscaling_checked_at >= AUTOSCALING_RECHECK
            if due or cache.autoscaling.target_removed:
                cache.autoscaling.target_removed = False
                cache.autoscaling_target = await client.scalable_target(ecs.cluster, ecs.service)
                cache.autoscaling_checked_at = now
    except AwsError as exc:
        return client, EcsReading(ecs.region, read_failure=exc.as_failure(), autoscaling=managed)
    return client, EcsReading(
        ecs.region, scaling.ServiceCounts(state.desired, state.running, state.pending),
        state.deployment_in_progress, cache.autoscaling_target, managed,
    )


async def _read_stale(
    spec: PolicySpec, policy: str, client: PrefectClient, aws: AwsClient | None, pool: PoolObservation,
    cache: ReadCache, created: datetime | None, now: datetime,
) -> StaleReading:
    stale_spec = spec.stale_runs
    assert stale_spec is not None
    observed_queues = set(spec.prefect.work_queues)  # the scope observe_pool counted PENDING runs in
    covered = not observed_queues or set(stale_spec.work_queues or observed_queues) <= observed_queues
    check = None
    if aws is not None and spec.ecs is not None and stale_spec.verify_infrastructure:
        check = EcsInfrastructureCheck(aws, spec.ecs.cluster)
    try:
        reading = await observe_stale_runs(
            client, stale_spec, pool=spec.prefect.work_pool, queues=list(spec.prefect.work_queues), policy=policy,
            online_workers=pool.online_workers, memory=cache.recovery, now=now, interval=spec.interval_delta,
            counting_since=created, infrastructure_check=check, pending_observed=pool.pending if covered else None,
        )
        return await _claimers_confirmed(client, spec, reading, now)
    except PrefectError as exc:
        return StaleReading(failure=Failure(exc.reason, exc.message))


async def _claimers_confirmed(client: PrefectClient, spec: PolicySpec, reading: StaleReading,
                              now: datetime) -> StaleReading:
    """A claimer judged OFFLINE on cached workers is confirmed by reading them (one request,
    only when recovery would act on it): a worker back ONLINE by heartbeats alone, or a new
    one on a READY pool, sends no event."""
    if not any(c is Claimer.OFFLINE for c in reading.claimers.values()):
        return reading
    online = await client.online_workers_read(spec.prefect.work_pool, list(spec.prefect.work_queues), now)
    if online is None:
        return reading
    claimer_of = {r.id: r.claimer for r in reading.runs}
    return replace(reading, claimers=freshness.confirmed_claimers(reading.claimers, claimer_of, online))
