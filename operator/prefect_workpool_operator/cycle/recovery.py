"""Stale-run recovery's reads for one policy and cycle (the decision is core's, the writes ``act_recovery``'s).

Reads: the stale candidates (paginated); who claimed them and when (worker labels on
the run, the worker's submitted-flow-run event); whether that worker has started or
stopped since (its ``prefect.worker.started`` / ``stopped`` events); how often each
was requeued before (``prefect.flow-run.Requeued`` events: the count lives in
Prefect, so an operator restart cannot reset it); and the ECS check. The per-cycle cap comes before
the per-run reads (``core.stale_plan.lookup_window``); a quiet cycle lists only the PENDING
runs not seen before (``core.stale.QuietPending``).

The reads come in two phases because the second depends on the first: list the stale
candidates, then look up claims, requeue counts, claimers and ECS for only the runs
in the capped window. ``observe_stale_runs`` does both and returns one immutable
``core.plan.StaleReading``; ``core.stale_plan.plan_recovery`` decides; ``act_recovery.write_batches``
writes the plan's batches (``core.recovery_plan``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from prefect_workpool_operator.concurrent_reads import gather_or_cancel
from prefect_workpool_operator.core import stale, stale_plan
from prefect_workpool_operator.core.plan import StaleReading
from prefect_workpool_operator.core.recovery_plan import recovery_rules
from prefect_workpool_operator.core.stale import InfraReading, PendingRun
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from prefect_workpool_operator.schema.models import StaleRunsSpec
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.pools import pool_scope
from prefect_workpool_operator.prefect.rest import PrefectError

log = logging.getLogger(__name__)

WORKER_NAME_LABEL = "prefect.worker.name"  # set by 3.x workers right after they claim a run
REQUEUE_LOOKBACK = timedelta(days=30)  # older Requeued events are past Prefect's default retention anyway
CLAIM_LOOKBACK_MARGIN = timedelta(minutes=5)


class InfrastructureCheck(Protocol):
    """Answers "what became of this run's infrastructure?"; the ECS check plugs in here."""

    async def check(self, runs: list[PendingRun]) -> dict[str, InfraReading]: ...


class NoInfrastructureCheck:
    async def check(self, runs: list[PendingRun]) -> dict[str, InfraReading]:
        return {}


async def observe_stale_runs(
    client: PrefectClient,
    spec: StaleRunsSpec,
    *,
    pool: str,
    queues: list[str],
    policy: str,
    online_workers: frozenset[str],
    memory: RecoveryMemory,
    now: datetime,
    interval: timedelta = timedelta(seconds=30),
    counting_since: datetime | None = None,
    infrastructure_check: InfrastructureCheck | None = None,
    pending_observed: int | None = None,
) -> StaleReading:
    """Every read recovery needs this cycle. ``pending_observed``: PENDING runs this cycle
    counted in a scope covering this one; 0 means there is nothing to list. Raises
    ``PrefectError`` when Prefect fails."""
    rules = recovery_rules(spec, interval)
    scope = pool_scope(pool, list(spec.work_queues) or queues)
    key = json.dumps([scope, sorted(spec.tags), rules.pending_timeout.total_seconds()], sort_keys=True)
    nothing_pending = pending_observed == 0
    quiet, timeout, tags = memory.quiet, rules.pending_timeout, list(spec.tags)
    if nothing_pending:  # the cycle's own count: no PENDING run at all
        runs: list[PendingRun] = []
        quiet.remember(key, runs, now, timeout)
        memory.quiet_version = None
    elif memory.total_requeued is not None and quiet.listable(key) and (
            quiet.usable(key, now, timeout) or quiet.stale_listed):
        # Remembered runs that cannot be stale yet are left out by the server (core.stale.QuietPending).
        # Nothing stale known: every PENDING run not remembered is listed. Stale runs listed last
        # cycle: the candidates, less the fresh remembered ones. (A remembered run turning due
        # while none is stale brings one full listing.)
        kept = quiet.not_due(now, timeout)
        every = not quiet.stale_listed
        version = client.counts_version(pool, queues) if every else None
        if every and version is not None and version == memory.quiet_version:
            runs = []  # no run of the pool changed since such a listing (the event stream says what changed)
        else:
            cutoff = None if every else stale.candidate_cutoff(now, timeout)
            runs = [pending_run(r) for r in await client.pending_candidates(scope, cutoff, tags, excluding=sorted(kept))]
        quiet.update(runs, now, timeout, kept)
        memory.quiet_version = version if every and not quiet.stale_listed else None
    else:
        runs = [pending_run(r) for r in await client.pending_candidates(
            scope, stale.candidate_cutoff(now, timeout), tags)]
        quiet.remember(key, runs, now, timeout)
        memory.quiet_version = None  # that listing held the candidates only, not every PENDING run
    stale_runs = stale.select_stale(runs, now, rules.pending_timeout)  # the plan selects with the same function

    claimers: dict[str, stale.Claimer] = {}
    infra: dict[str, InfraReading] = {}
    # The cap before the per-run reads: only runs this cycle could act on are looked up.
    window = stale_plan.lookup_window(stale_runs, memory.observations, rules)
    stale_ids = {r.id for r in stale_runs}
    memory.requeue_counts = {k: v for k, v in memory.requeue_counts.items() if k in stale_ids}
    memory.claims.keep_only(stale_runs)
    if window:
        remembered = set(memory.claims.known(window))
        window = await with_claims_and_counts(client, window, memory, now)
        claimers = await _claimer_statuses(client, window, online_workers)
        infra = await (infrastructure_check or NoInfrastructureCheck()).check(window)
        window = await _recheck_reported(client, window, remembered, claimers, infra, memory, now)
    looked_up = {r.id: r for r in window}
    stale_runs = [looked_up.get(r.id, r) for r in stale_runs]
    if memory.total_requeued is None:
        since = max(counting_since or now - REQUEUE_LOOKBACK, now - REQUEUE_LOOKBACK)
        try:
            memory.total_requeued = await client.requeued_total(pool, since)
        except PrefectError as exc:
            if exc.status_code is None:
                raise  # unreachable, auth: the cycle reports it
            # A server that cannot count events: count from this start on, ask again next start.
            log.warning("policy %s: cannot count earlier requeues: %s", policy, exc.message)
            memory.total_requeued = 0
    return StaleReading(tuple(stale_runs), claimers, infra, frozenset(looked_up), memory.total_requeued)


async def with_claims_and_counts(
    client: PrefectClient, runs: list[PendingRun], memory: RecoveryMemory, now: datetime
) -> list[PendingRun]:
    known = {r.id: memory.requeue_counts[r.id][1] for r in runs
             if memory.requeue_counts.get(r.id, (None, 0))[0] == r.pending_since}
    unknown = [r.id for r in runs if r.id not in known]
    # Every run's claim event: its time is what a later worker start is compared with.
    claims = memory.claims.known(runs)
    unsettled = memory.claims.to_read(runs)
    since = min((r.pending_since for r in unsettled), default=now) - CLAIM_LOOKBACK_MARGIN
    read, claimed = await gather_or_cancel(  # independent reads: sent together
        client.requeue_counts(unknown, now - REQUEUE_LOOKBACK) if unknown else _nothing(),
        client.claims([r.id for r in unsettled], since) if unsettled else _nothing())
    counts = memory.requeues.merged({**known, **read}, now)
    memory.requeue_counts.update((r.id, (r.pending_since, counts.get(r.id, 0))) for r in runs)
    claims.update(claimed)
    memory.claims.record(unsettled, claimed)
    out = []
    for r in runs:
        claim = claims.get(r.id)
        same_worker = claim is not None and (r.claimer is None or claim.worker == r.claimer)
        out.append(PendingRun(
            id=r.id,
            pending_since=r.pending_since,
            infrastructure_pid=r.infrastructure_pid,
            claimer=r.claimer or (claim.worker if claim else None),
            claimed_at=claim.at if claim and same_worker else None,
            submission_reported=bool(claim and claim.executed),
            requeues=counts.get(r.id, 0),
            state_id=r.state_id,
        ))
    return out


async def _recheck_reported(
    client: PrefectClient, window: list[PendingRun], remembered: set[str], claimers: dict[str, stale.Claimer],
    infra: dict[str, InfraReading], memory: RecoveryMemory, now: datetime,
) -> list[PendingRun]:
    """A remembered claim's "task reported" flag can turn true between readings; it decides a
    run only where no ECS check answers and the claimer is not online, so those claims are read again."""
    again = [r for r in window if r.id in remembered and not r.submission_reported
             and claimers.get(r.id) is not stale.Claimer.ONLINE
             and infra.get(r.id, stale.NOT_CHECKED).state is stale.Infrastructure.NOT_CHECKED]
    if not again:
        return window
    memory.claims.forget(again)
    fresh = {r.id: r for r in await with_claims_and_counts(client, again, memory, now)}
    return [fresh.get(r.id, r) for r in window]


async def _nothing() -> dict[str, Any]:
    return {}


async def _claimer_statuses(
    client: PrefectClient, runs: list[PendingRun], online_workers: frozenset[str]
) -> dict[str, stale.Claimer]:
    lifecycle = await claimer_lifecycles(client, runs)
    return {r.id: stale.claimer_status(r, online_workers, lifecycle) for r in runs}


async def claimer_lifecycles(client: PrefectClient, runs: list[PendingRun]) -> dict[str, stale.WorkerLifecycle]:
    """The claimers' latest started/stopped events since the earliest claim (one events query)."""
    names = sorted({r.claimer for r in runs if r.claimer})
    since = min((r.claimed_at or r.pending_since) for r in runs) - CLAIM_LOOKBACK_MARGIN
    return await client.worker_lifecycle(names, since) if names else {}


def pending_run(raw: dict[str, Any]) -> PendingRun:
    state = raw.get("state") or {}
    labels = raw.get("labels") or {}
    return PendingRun(
        id=str(raw["id"]),
        pending_since=datetime.fromisoformat(str(state.get("timestamp") or raw.get("state_timestamp"))),
        infrastructure_pid=raw.get("infrastructure_pid") or None,
        claimer=str(labels[WORKER_NAME_LABEL]) if labels.get(WORKER_NAME_LABEL) else None,
        state_id=str(state["id"]) if state.get("id") else (str(raw["state_id"]) if raw.get("state_id") else None),
    )
