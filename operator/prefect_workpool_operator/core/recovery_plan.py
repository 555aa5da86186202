"""Stale-run recovery as one cycle's plan: batches to write, and what their outcome tells.

``core.stale_plan`` decides run by run; this module groups the decided runs into guarded
write batches (each run's state message names its own reason) and, once the batches
were written, turns their outcome into the StaleRunsRecovered figures and Events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prefect_workpool_operator.schema.models import StaleRunsSpec
from prefect_workpool_operator.core import stale
from prefect_workpool_operator.core.conditions import format_time
from prefect_workpool_operator.core.durations import format_duration
from prefect_workpool_operator.core.stale import RecoveryRules
from prefect_workpool_operator.core.stale_plan import RecoveryPlan

WRITE_BATCH = 50  # Prefect's maximum runs per bulk_set_state call
REQUEUED_STATE_NAME = "Requeued"  # the server emits prefect.flow-run.Requeued for each requeue
SAMPLE_SIZE = 10


@dataclass(frozen=True)
class Batch:
    """One guarded write: these runs, if still PENDING, move to ``state``."""

    action: str
    run_ids: tuple[str, ...]
    state: dict[str, Any]


@dataclass
class WriteOutcome:
    """What the batches did: accepted runs per action, runs that had moved on, refusals."""

    changed: dict[str, list[str]] = field(default_factory=dict)
    moved_on: int = 0
    failed: int = 0
    writes: int = 0

    def add(self, action: str, accepted: list[str], moved_on: int, failed: int, writes: int) -> None:
        self.changed.setdefault(action, []).extend(accepted)
        self.moved_on += moved_on
        self.failed += failed
        self.writes += writes

    @property
    def recovered(self) -> int:
        return sum(len(v) for v in self.changed.values())


def write_batches(plan: RecoveryPlan, rules: RecoveryRules, policy: str) -> tuple[Batch, ...]:
    """≤ WRITE_BATCH runs per batch, one group per action and state message."""
    return tuple(
        Batch(action, tuple(group[i : i + WRITE_BATCH]), target_state(action, message))
        for action, ids in plan.by_action().items()
        for message, group in _by_message(ids, plan, policy, rules).items()
        for i in range(0, len(group), WRITE_BATCH)
    )


def _by_message(ids: list[str], plan: RecoveryPlan, policy: str, rules: RecoveryRules) -> dict[str, list[str]]:
    """Runs grouped by the state message they get: each names its run's true reason."""
    groups: dict[str, list[str]] = {}
    for run_id in ids:
        message = ("{verb}" f" by prefectops.dev policy {policy}: PENDING for at least "
                   f"{format_duration(rules.pending_timeout)} and {plan.decisions[run_id].message}")
        groups.setdefault(message, []).append(run_id)
    return groups


def target_state(action: str, message: str) -> dict[str, Any]:
    if action == stale.RESCHEDULE:
        # No scheduled_time: the server stamps its own "now", so clock skew can't delay the run.
        return {"type": "SCHEDULED", "name": REQUEUED_STATE_NAME, "message": _verb(message, "Requeued")}
    if action == stale.MARK_CRASHED:
        return {"type": "CRASHED", "name": "Crashed", "message": _verb(message, "Marked Crashed")}
    return {"type": "CANCELLED", "name": "Cancelled", "message": _verb(message, "Cancelled")}


def _verb(message: str, verb: str) -> str:
    # Not str.format: the reason may quote ECS's stoppedReason, braces and all.
    return message.replace("{verb}", verb, 1)


def figures(plan: RecoveryPlan, recovered: int, moved_on: int, dry_run: bool, total: int) -> dict[str, Any]:
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


@dataclass(frozen=True)
class RecoveryNews:
    """What a cycle that changed runs tells: ``status.lastRecovery``, an Event, maybe a Warning."""

    last_recovery: dict[str, Any]
    event_message: str
    warning: str | None


def recovery_news(plan: RecoveryPlan, outcome: WriteOutcome, now: datetime) -> RecoveryNews | None:
    changed = outcome.changed
    recovered = outcome.recovered
    if not recovered:
        return None
    sample = [i for ids in changed.values() for i in ids][:SAMPLE_SIZE]
    written = {i for ids in changed.values() for i in ids}
    reasons = Counter(plan.decisions[i].reason for i in written)
    last = {
        "time": format_time(now),
        "rescheduled": len(changed.get(stale.RESCHEDULE, [])),
        "crashed": len(changed.get(stale.MARK_CRASHED, [])),
        "cancelled": len(changed.get(stale.CANCEL, [])),
        "runIds": sample,
        "exhausted": sum(1 for i in plan.exhausted if i in written),
        "reasons": dict(sorted(reasons.items())),
    }
    verbs = [f"{last['rescheduled']} rescheduled", f"{last['crashed']} marked Crashed", f"{last['cancelled']} cancelled"]
    summary = ", ".join(v for v in verbs if not v.startswith("0 "))
    why = "; ".join(f"{n} {reason}: {plan.example(reason)}" for reason, n in sorted(reasons.items()))
    skipped = sum(plan.skipped.values()) + outcome.moved_on
    event = f"Recovered {recovered} of {plan.stale} stale PENDING run(s): {summary} ({why})" + (
        f"; {skipped} left alone (see status.staleRuns.skipped)" if skipped else ""
    )
    risky = [i for ids in changed.values() for i in ids if plan.decisions[i].double_run_risk]
    warning = None
    if risky:
        warning = (f"{len(risky)} run(s) changed past hardTimeout while their claiming worker was still online "
                   f"(hardTimeoutOverridesLiveClaimer): each may run twice if that worker still starts it, "
                   f"e.g. {risky[0]}")
    return RecoveryNews(last, event, warning)


def recovery_rules(spec: StaleRunsSpec, interval: timedelta) -> RecoveryRules:
    """The spec model holds the defaults; the rules only carry them into the decision."""
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
