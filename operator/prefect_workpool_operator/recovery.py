"""Stale-run recovery for one policy and cycle: read, decide (core.stale), write in batches.

Reads: the stale candidates (paginated); who claimed them and when (worker labels on
the run, the worker's submitted-flow-run event); whether that worker has started or
stopped since (its ``prefect.worker.started`` / ``stopped`` events); how often each
was requeued before (``prefect.flow-run.Requeued`` events: the count lives in
Prefect, so an operator restart cannot reset it); and the ECS check. Writes:
``bulk_set_state`` with a PENDING guard, ≤50 runs per call, WRITE_CONCURRENCY calls at
once, one group per reason so each run's state message tells its own; servers without
it get re-read + ``set_state`` per run. Never ``force``. The per-cycle cap comes before
the per-run reads (``core.stale.lookup_window``); a quiet cycle lists only the PENDING
runs not seen before (``core.stale.QuietPending``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from .core import stale
from .core.conditions import Condition, format_time
from .core.durations import format_duration
from .core.stale import InfraReading, Observations, PendingRun, RecoveryPlan, RecoveryRules
from .models import StaleRunsSpec
from .prefect_api import BULK_LIMIT, REQUEUED_STATE_NAME, PrefectClient, PrefectError, pool_scope

log = logging.getLogger(__name__)

WORKER_NAME_LABEL = "prefect.worker.name"  # set by 3.x workers right after they claim a run
REQUEUE_LOOKBACK = timedelta(days=30)  # older Requeued events are past Prefect's default retention anyway
CLAIM_LOOKBACK_MARGIN = timedelta(minutes=5)
SAMPLE_SIZE = 10
# Guarded bulk writes in flight at once (bench/recovery_fleet.py measures 1/2/4/8 on PostgreSQL).
WRITE_CONCURRENCY = 4


class InfrastructureCheck(Protocol):
    """Answers "what became of this run's infrastructure?"; the ECS check plugs in here."""

    async def check(self, runs: list[PendingRun]) -> dict[str, InfraReading]: ...


class NoInfrastructureCheck:
    async def check(self, runs: list[PendingRun]) -> dict[str, InfraReading]:
        return {}


@dataclass
class RecoveryOutcome:
    condition: Condition
    figures: dict[str, Any]
    last_recovery: dict[str, Any] | None = None
    event_message: str | None = None  # set when the cycle changed runs
    warning: str | None = None  # set when runs were changed despite a live claimer (opt-in)
    writes: int = 0


@dataclass
class RequeueMemory:
    """Requeues this process made, for the seconds before their events are visible.

    Entries older than ``keep`` are dropped: by then the events answer for them, and
    a long-running operator must not grow with every run it ever requeued.
    """

    counts: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    keep: timedelta = timedelta(minutes=10)

    def record(self, run_id: str, count: int, now: datetime) -> None:
        self.counts[run_id] = (count, now)

    def merged(self, from_events: dict[str, int], now: datetime) -> dict[str, int]:
        self.counts = {k: v for k, v in self.counts.items() if now - v[1] < self.keep}
        return {**from_events, **{k: max(n, from_events.get(k, 0)) for k, (n, _) in self.counts.items()}}


@dataclass
class RecoveryMemory:
    """What recovery keeps between a policy's cycles, in memory only."""

    requeues: RequeueMemory = field(default_factory=RequeueMemory)
    observations: Observations = field(default_factory=Observations)
    # id -> (pending_since, requeues): a run's count changes only by a requeue, which
    # gives it a new PENDING state, so it is read once per PENDING state.
    requeue_counts: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    # Every PENDING run, none stale, at the last full listing: quiet cycles list only new ones.
    quiet: stale.QuietPending = field(default_factory=stale.QuietPending)
    # PrefectClient.counts_version at the last listing of every PENDING run not remembered.
    quiet_version: int | None = None
    # Requeues of the pool counted from Prefect once (first cycle after a start), then
    # advanced by this process's own: the events of a requeue show up seconds later.
    total_requeued: int | None = None


def rules_from(spec: StaleRunsSpec, interval: timedelta) -> RecoveryRules:
    return RecoveryRules(
        pending_timeout=spec.pending_timeout_delta,
        hard_timeout=spec.hard_timeout_delta,
        hard_timeout_overrides_live_claimer=spec.hard_timeout_overrides_live_claimer,
        confirm_after=interval,
        action=spec.action,
        max_requeues=spec.max_requeues_per_run,
        on_exhausted=spec.on_exhausted,
        max_per_cycle=spec.max_runs_per_cycle,
    )


async def recover_stale_runs(
    client: PrefectClient,
    spec: StaleRunsSpec,
    *,
    pool: str,
    queues: list[str],
    policy: str,
    online_workers: frozenset[str],
    dry_run: bool,
    memory: RecoveryMemory,
    now: datetime,
    interval: timedelta = timedelta(seconds=30),
    counting_since: datetime | None = None,
    infrastructure_check: InfrastructureCheck | None = None,
    pending_observed: int | None = None,
) -> RecoveryOutcome:
    """``pending_observed``: PENDING runs this cycle counted in a scope covering this one;
    0 means there is nothing to list."""
    rules = rules_from(spec, interval)
    scope = pool_scope(pool, list(spec.work_queues) or queues)
    key = json.dumps([scope, sorted(spec.tags), rules.pending_timeout.total_seconds()], sort_keys=True)
    nothing_pending = pending_observed == 0
    if not nothing_pending and memory.total_requeued is not None and memory.quiet.usable(key, now, rules.pending_timeout):
        # Nothing remembered can be stale yet: list only the PENDING runs not remembered —
        # none can be new if no run of the pool changed since the last such listing (after
        # which every PENDING run is remembered; the event stream says what changed).
        version = client.counts_version(pool, queues)
        new = [] if version is not None and version == memory.quiet_version else [
            _pending_run(r) for r in await client.pending_candidates(
                scope, None, list(spec.tags), excluding=sorted(memory.quiet.pending))]
        memory.quiet_version = version
        if not any(stale.is_stale(r, now, rules.pending_timeout) for r in new):
            memory.quiet.add(new)
            memory.observations.keep_only(set())
            plan = stale.RecoveryPlan()
            return RecoveryOutcome(stale.recovery_condition(plan, rules, dry_run=dry_run),
                                   _figures(plan, 0, 0, dry_run, memory.total_requeued))
    raw = [] if nothing_pending else await client.pending_candidates(
        scope, stale.candidate_cutoff(now, rules.pending_timeout), list(spec.tags))
    runs = [_pending_run(r) for r in raw]
    memory.quiet.remember(key, runs, now, rules.pending_timeout)
    memory.quiet_version = None  # that listing held the candidates only, not every PENDING run
    stale_runs = [r for r in runs if stale.is_stale(r, now, rules.pending_timeout)]

    claimers: dict[str, stale.Claimer] = {}
    infra: dict[str, InfraReading] = {}
    # The cap before the per-run reads: only runs this cycle could act on are looked up.
    window = stale.lookup_window(stale_runs, memory.observations, rules)
    stale_ids = {r.id for r in stale_runs}
    memory.requeue_counts = {k: v for k, v in memory.requeue_counts.items() if k in stale_ids}
    if window:
        window = await _with_claims_and_counts(client, window, memory, now)
        claimers = await _claimer_statuses(client, window, online_workers)
        infra = await (infrastructure_check or NoInfrastructureCheck()).check(window)
    looked_up = {r.id: r for r in window}
    stale_runs = [looked_up.get(r.id, r) for r in stale_runs]
    plan = stale.plan_recovery(stale_runs, claimers=claimers, infrastructure=infra, rules=rules,
                               observations=memory.observations, now=now, looked_at=set(looked_up))
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

    moved_on = 0
    changed: dict[str, list[str]] = {}
    failed = 0
    writes = 0
    if not dry_run and plan.to_write:
        batches = [(action, group[i : i + BULK_LIMIT], _target_state(action, message))
                   for action, ids in plan.by_action().items()
                   for message, group in _by_message(ids, plan, policy, rules).items()
                   for i in range(0, len(group), BULK_LIMIT)]
        slots = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def bounded(batch: list[str], state: dict[str, Any]) -> _ApplyResult:
            async with slots:
                return await _apply(client, batch, state)

        results = await asyncio.gather(*(bounded(batch, state) for _, batch, state in batches),
                                       return_exceptions=True)
        error = next((r for r in results if isinstance(r, BaseException)), None)
        for (action, _, _), result in zip(batches, results):
            if isinstance(result, BaseException):
                continue
            changed.setdefault(action, []).extend(result.accepted)
            moved_on += result.moved_on
            failed += result.failed
            writes += result.writes
        requeues_before = {r.id: r.requeues for r in stale_runs}
        for run_id in changed.get(stale.RESCHEDULE, []):
            memory.requeues.record(run_id, requeues_before.get(run_id, 0) + 1, now)
        memory.total_requeued += len(changed.get(stale.RESCHEDULE, []))
        if error is not None:
            raise error  # after recording the batches that did go through

    recovered = sum(len(v) for v in changed.values())
    condition = stale.recovery_condition(plan, rules, dry_run=dry_run, failed=failed)
    figures = _figures(plan, recovered, moved_on, dry_run, memory.total_requeued)
    if not recovered:
        return RecoveryOutcome(condition, figures, writes=writes)
    sample = [i for ids in changed.values() for i in ids][:SAMPLE_SIZE]
    last = {
        "time": format_time(now),
        "rescheduled": len(changed.get(stale.RESCHEDULE, [])),
        "crashed": len(changed.get(stale.MARK_CRASHED, [])),
        "cancelled": len(changed.get(stale.CANCEL, [])),
        "runIds": sample,
    }
    verbs = [f"{last['rescheduled']} rescheduled", f"{last['crashed']} marked Crashed", f"{last['cancelled']} cancelled"]
    summary = ", ".join(v for v in verbs if not v.startswith("0 "))
    reasons = Counter(plan.decisions[i].reason for ids in changed.values() for i in ids)
    why = "; ".join(f"{n} {reason}: {plan.example(reason)}" for reason, n in sorted(reasons.items()))
    skipped = sum(plan.skipped.values()) + moved_on
    event = f"Recovered {recovered} of {plan.stale} stale PENDING run(s): {summary} ({why})" + (
        f"; {skipped} left alone (see status.staleRuns.skipped)" if skipped else ""
    )
    risky = [i for ids in changed.values() for i in ids if plan.decisions[i].double_run_risk]
    warning = None
    if risky:
        warning = (f"{len(risky)} run(s) changed past hardTimeout while their claiming worker was still online "
                   f"(hardTimeoutOverridesLiveClaimer): each may run twice if that worker still starts it, "
                   f"e.g. {risky[0]}")
    return RecoveryOutcome(condition, figures, last_recovery=last, event_message=event, warning=warning, writes=writes)


def _by_message(ids: list[str], plan: RecoveryPlan, policy: str, rules: RecoveryRules) -> dict[str, list[str]]:
    """Runs grouped by the state message they get: each names its run's true reason."""
    groups: dict[str, list[str]] = {}
    for run_id in ids:
        message = ("{verb}" f" by prefectops.dev policy {policy}: PENDING for at least "
                   f"{format_duration(rules.pending_timeout)} and {plan.decisions[run_id].message}")
        groups.setdefault(message, []).append(run_id)
    return groups


@dataclass
class _ApplyResult:
    accepted: list[str]
    moved_on: int
    failed: int
    writes: int


async def _apply(client: PrefectClient, batch: list[str], state: dict[str, Any]) -> _ApplyResult:
    """One guarded batch (≤ BULK_LIMIT runs): only runs still PENDING change, never forced."""
    accepted: list[str] = []
    moved_on = failed = writes = 0
    results = None if client.bulk_unsupported else await client.bulk_set_pending_runs(batch, state)
    if results is not None:
        writes += 1
        accepted += [i for i in batch if results.get(i) == "ACCEPT"]
        moved_on += sum(1 for i in batch if i not in results)
        failed += sum(1 for i in batch if i in results and results[i] != "ACCEPT")
    else:
        client.bulk_unsupported = True  # an older server or a Cloud plan without it: per run from now on
        for run_id in batch:
            status = await client.set_pending_run(run_id, state)
            if status is None:
                moved_on += 1
                continue
            writes += 1
            if status == "ACCEPT":
                accepted.append(run_id)
            else:
                failed += 1
    return _ApplyResult(accepted, moved_on, failed, writes)


def _target_state(action: str, message: str) -> dict[str, Any]:
    if action == stale.RESCHEDULE:
        # No scheduled_time: the server stamps its own "now", so clock skew can't delay the run.
        return {"type": "SCHEDULED", "name": REQUEUED_STATE_NAME, "message": _verb(message, "Requeued")}
    if action == stale.MARK_CRASHED:
        return {"type": "CRASHED", "name": "Crashed", "message": _verb(message, "Marked Crashed")}
    return {"type": "CANCELLED", "name": "Cancelled", "message": _verb(message, "Cancelled")}


def _verb(message: str, verb: str) -> str:
    # Not str.format: the reason may quote ECS's stoppedReason, braces and all.
    return message.replace("{verb}", verb, 1)


async def _with_claims_and_counts(
    client: PrefectClient, runs: list[PendingRun], memory: RecoveryMemory, now: datetime
) -> list[PendingRun]:
    ids = [r.id for r in runs]
    known = {r.id: memory.requeue_counts[r.id][1] for r in runs
             if memory.requeue_counts.get(r.id, (None, 0))[0] == r.pending_since}
    unknown = [i for i in ids if i not in known]
    read = await client.requeue_counts(unknown, now - REQUEUE_LOOKBACK) if unknown else {}
    counts = memory.requeues.merged({**known, **read}, now)
    memory.requeue_counts.update((r.id, (r.pending_since, counts.get(r.id, 0))) for r in runs)
    # Every run's claim event: its time is what a later worker start is compared with.
    since = min(r.pending_since for r in runs) - CLAIM_LOOKBACK_MARGIN
    claims = await client.claims(ids, since)
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
        ))
    return out


async def _claimer_statuses(
    client: PrefectClient, runs: list[PendingRun], online_workers: frozenset[str]
) -> dict[str, stale.Claimer]:
    names = sorted({r.claimer for r in runs if r.claimer})
    since = min((r.claimed_at or r.pending_since) for r in runs) - CLAIM_LOOKBACK_MARGIN
    lifecycle = await client.worker_lifecycle(names, since) if names else {}
    return {r.id: stale.claimer_status(r, online_workers, lifecycle) for r in runs}


def _pending_run(raw: dict[str, Any]) -> PendingRun:
    state = raw.get("state") or {}
    labels = raw.get("labels") or {}
    return PendingRun(
        id=str(raw["id"]),
        pending_since=datetime.fromisoformat(str(state.get("timestamp") or raw.get("state_timestamp"))),
        infrastructure_pid=raw.get("infrastructure_pid") or None,
        claimer=str(labels[WORKER_NAME_LABEL]) if labels.get(WORKER_NAME_LABEL) else None,
    )


def _figures(plan: RecoveryPlan, recovered: int, moved_on: int, dry_run: bool, total: int) -> dict[str, Any]:
    skipped: Counter[str] = Counter(plan.skipped)
    keys = {
        stale.CLAIMER_ALIVE: "claimerAlive",
        stale.INFRASTRUCTURE_ALIVE: "infrastructureAlive",
        stale.INFRASTRUCTURE_UNKNOWN: "infrastructureUnknown",
        stale.INFRASTRUCTURE_UNVERIFIED: "infrastructureUnverified",
        stale.AWAITING_CONFIRMATION: "awaitingConfirmation",
        stale.BATCH_LIMIT: "batchLimit",
    }
    return {
        "stale": plan.stale,
        "recovered": recovered,
        "wouldRecover": (plan.to_write if dry_run else 0) + len(plan.report_only),
        "exhausted": len(plan.exhausted),
        "skipped": {**{v: skipped.get(k, 0) for k, v in keys.items()}, "movedOn": moved_on},
        "totalRecovered": total,
    }
