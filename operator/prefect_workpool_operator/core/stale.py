"""Which PENDING runs are stale, whose they are, and what to do with each.

The Prefect API has no compare-and-set: a run that starts RUNNING between our read
and our write can still be moved back to SCHEDULED (FACTS.md measured it). So the
decision rests on *ownership*, not timing: a run is touched only when whoever
claimed it can no longer act on it — its claiming worker is offline or unknown and
no infrastructure for it is alive. The infrastructure answer comes from outside
(ECS, when configured) and may be "unknown", which means hands off.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .conditions import Condition
from .durations import format_duration

# Workers claim runs up to PREFECT_WORKER_PREFETCH_SECONDS (10 s) before their
# expected start, so a run's PENDING time can begin that much before it.
PREFETCH = timedelta(seconds=10)

RESCHEDULE, MARK_CRASHED, CANCEL, REPORT_ONLY = "Reschedule", "MarkCrashed", "Cancel", "ReportOnly"

# Skip reasons, reported in status figures.
CLAIMER_ONLINE = "ClaimerOnline"
INFRASTRUCTURE_ALIVE = "InfrastructureAlive"
INFRASTRUCTURE_UNKNOWN = "InfrastructureUnknown"
INFRASTRUCTURE_UNVERIFIED = "InfrastructureUnverified"
BATCH_LIMIT = "BatchLimit"

STALE_RUNS_RECOVERED = "StaleRunsRecovered"


class Infrastructure(enum.Enum):
    """What the infrastructure check said about a run's task."""

    ALIVE = "alive"  # a task for the run is starting or running: never touch
    GONE = "gone"  # checked: no live task
    UNKNOWN = "unknown"  # the check failed: fail static
    NOT_CHECKED = "not-checked"  # no check configured


@dataclass(frozen=True)
class PendingRun:
    id: str
    pending_since: datetime  # the PENDING state's timestamp
    infrastructure_pid: str | None = None
    claimer: str | None = None  # worker named by its prefect.worker.submitted-flow-run event
    submission_reported: bool = False  # prefect.worker.executed-flow-run seen: infrastructure was created
    requeues: int = 0  # earlier requeues by this operator

    def pending_for(self, now: datetime) -> timedelta:
        return now - self.pending_since

    @property
    def has_infrastructure_evidence(self) -> bool:
        return bool(self.infrastructure_pid) or self.submission_reported


@dataclass(frozen=True)
class RecoveryRules:
    pending_timeout: timedelta
    hard_timeout: timedelta
    action: str = RESCHEDULE
    max_requeues: int = 3
    on_exhausted: str = MARK_CRASHED
    max_per_cycle: int = 50


@dataclass
class RecoveryPlan:
    stale: int = 0
    reschedule: list[str] = field(default_factory=list)
    mark_crashed: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    report_only: list[str] = field(default_factory=list)  # recoverable, but the action is ReportOnly
    exhausted: list[str] = field(default_factory=list)  # reached maxRequeuesPerRun (also in their action's list)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def to_write(self) -> int:
        return len(self.reschedule) + len(self.mark_crashed) + len(self.cancel)

    def by_action(self) -> dict[str, list[str]]:
        return {RESCHEDULE: self.reschedule, MARK_CRASHED: self.mark_crashed, CANCEL: self.cancel}


def candidate_cutoff(now: datetime, pending_timeout: timedelta) -> datetime:
    """Server-side pre-filter: only runs expected to start before this can be stale.

    A stale run entered PENDING at least ``pending_timeout`` ago and was claimed at
    most PREFETCH before its expected start, so its expected start is before
    now - pending_timeout + PREFETCH. Runs picked up late pass too; the exact check
    on the state's timestamp happens client-side (``is_stale``).
    """
    return now - pending_timeout + PREFETCH


def is_stale(run: PendingRun, now: datetime, pending_timeout: timedelta) -> bool:
    """Exactly at the threshold counts as stale."""
    return run.pending_for(now) >= pending_timeout


def plan_recovery(
    runs: list[PendingRun],
    *,
    online_workers: set[str],
    infrastructure: dict[str, Infrastructure],
    rules: RecoveryRules,
    now: datetime,
) -> RecoveryPlan:
    """Decide, run by run, oldest first; at most ``max_per_cycle`` runs are acted on."""
    plan = RecoveryPlan()
    stale = sorted((r for r in runs if is_stale(r, now, rules.pending_timeout)), key=lambda r: r.pending_since)
    plan.stale = len(stale)
    budget = rules.max_per_cycle
    for run in stale:
        skip = ownership_skip(run, online_workers, infrastructure.get(run.id, Infrastructure.NOT_CHECKED), rules, now)
        if skip:
            plan.skipped[skip] += 1
            continue
        if budget <= 0:
            plan.skipped[BATCH_LIMIT] += 1
            continue
        action = rules.action
        if action == RESCHEDULE and run.requeues >= rules.max_requeues:
            action = rules.on_exhausted  # the cap only limits requeues; terminal actions need none
            plan.exhausted.append(run.id)
        if action == REPORT_ONLY:
            plan.report_only.append(run.id)
            continue
        plan.by_action()[action].append(run.id)
        budget -= 1
    return plan


def ownership_skip(
    run: PendingRun, online_workers: set[str], infra: Infrastructure, rules: RecoveryRules, now: datetime
) -> str | None:
    """Why this stale run must be left alone, or None when no one can act on it any more."""
    if infra is Infrastructure.ALIVE:
        return INFRASTRUCTURE_ALIVE  # whatever the age: its task may still start user code
    if infra is Infrastructure.UNKNOWN:
        return INFRASTRUCTURE_UNKNOWN
    past_hard_timeout = run.pending_for(now) >= rules.hard_timeout
    if run.claimer is not None and run.claimer in online_workers and not past_hard_timeout:
        return CLAIMER_ONLINE  # it may be retrying a throttled RunTask
    if infra is Infrastructure.NOT_CHECKED and run.has_infrastructure_evidence and not past_hard_timeout:
        return INFRASTRUCTURE_UNVERIFIED  # a task may exist and nobody checked it
    return None


def recovery_condition(plan: RecoveryPlan, rules: RecoveryRules, *, dry_run: bool, failed: int = 0) -> Condition:
    """StaleRunsRecovered for a cycle's plan (and how many of its writes failed)."""
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(plan.skipped.items()))
    tail = f" Skipped: {skipped}." if skipped else ""
    if plan.stale == 0:
        return Condition(STALE_RUNS_RECOVERED, "True", "NoneStale",
                         f"No run has been PENDING longer than {format_duration(rules.pending_timeout)}.")
    if failed:
        return Condition(STALE_RUNS_RECOVERED, "False", "RecoveryFailed",
                         f"{failed} of {plan.to_write} state changes failed; retrying next cycle.{tail}")
    if dry_run and plan.to_write:
        return Condition(STALE_RUNS_RECOVERED, "False", "DryRun",
                         f"dryRun: would {_summary(plan)}; nothing was written.{tail}")
    if plan.report_only:
        return Condition(STALE_RUNS_RECOVERED, "False", "ReportOnly",
                         f"{len(plan.report_only)} stale run(s) are recoverable; action is ReportOnly.{tail}")
    if plan.exhausted and plan.to_write:
        return Condition(STALE_RUNS_RECOVERED, "True", "CapExhausted",
                         f"{_summary(plan)}; {len(plan.exhausted)} run(s) reached maxRequeuesPerRun="
                         f"{rules.max_requeues}.{tail}")
    if plan.to_write:
        return Condition(STALE_RUNS_RECOVERED, "True", "Recovered", f"{_summary(plan).capitalize()}.{tail}")
    return Condition(STALE_RUNS_RECOVERED, "True", "Protected",
                     f"{plan.stale} stale run(s), none recoverable now.{tail}")


def _summary(plan: RecoveryPlan) -> str:
    parts = []
    if plan.reschedule:
        parts.append(f"reschedule {len(plan.reschedule)}")
    if plan.mark_crashed:
        parts.append(f"mark {len(plan.mark_crashed)} Crashed")
    if plan.cancel:
        parts.append(f"cancel {len(plan.cancel)}")
    return ", ".join(parts) + f" of {plan.stale} stale run(s)"
