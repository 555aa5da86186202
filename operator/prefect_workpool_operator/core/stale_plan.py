"""A cycle's stale runs as one plan: which it looks at, which it acts on, and its condition.

``core.stale.decide`` answers for one run on one observation. ``Observations`` adds
that a recoverable reading must be seen on two cycles at least one interval apart, so
one odd answer (a task whose tags ECS briefly lost) never acts; ``lookup_window`` and
``plan_recovery`` cap the runs a cycle reads and writes; ``recovery_condition`` words
the plan as StaleRunsRecovered. ``core.recovery_plan`` then batches the writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Hashable

from prefect_workpool_operator.core.conditions import Condition
from prefect_workpool_operator.core.durations import format_duration
from prefect_workpool_operator.core.stale import (
    AWAITING_CONFIRMATION,
    BATCH_LIMIT,
    CANCEL,
    CLAIMER_ALIVE,
    INFRASTRUCTURE_ALIVE,
    INFRASTRUCTURE_UNKNOWN,
    INFRASTRUCTURE_UNVERIFIED,
    MARK_CRASHED,
    NOT_CHECKED,
    REPORT_ONLY,
    RESCHEDULE,
    STALE_RUNS_RECOVERED,
    Claimer,
    Decision,
    InfraReading,
    PendingRun,
    RecoveryRules,
    decide,
    select_stale,
)


@dataclass
class Observations:
    """When each stale run was first seen recoverable, kept between cycles in memory.

    Keyed by run id and the PENDING state (id and time: a new claim starts afresh); runs no
    longer stale are forgotten, so the map never outgrows the stale set. After an
    operator restart the rule simply starts again.
    """

    first: dict[str, tuple[Hashable, datetime]] = field(default_factory=dict)  # id -> (state_key, seen)
    # id -> state_key of runs last seen hands-off: looked at after the others (lookup_window)
    hands_off: dict[str, Hashable] = field(default_factory=dict)

    def confirm(self, run: PendingRun, decision: Decision, now: datetime, after: timedelta) -> bool:
        """Whether this recoverable reading confirms an earlier one at least ``after`` ago.

        A hands-off reading (live task, live claimer) wipes the earlier one; a hold
        (unknown) keeps it, so a throttle that lifts needs no fresh pair.
        """
        seen = self.first.get(run.id)
        if seen is not None and seen[0] != run.state_key:
            seen = None
        if decision.hands_off:
            self.first.pop(run.id, None)
            self.hands_off[run.id] = run.state_key
            return False
        self.hands_off.pop(run.id, None)
        if not decision.recover:
            return False
        if seen is None:
            self.first[run.id] = (run.state_key, now)
            return False
        return now - seen[1] >= after

    def keep_only(self, run_ids: set[str]) -> None:
        self.first = {k: v for k, v in self.first.items() if k in run_ids}
        self.hands_off = {k: v for k, v in self.hands_off.items() if k in run_ids}

    def awaiting(self, run: PendingRun) -> bool:
        seen = self.first.get(run.id)
        return seen is not None and seen[0] == run.state_key

    def was_hands_off(self, run: PendingRun) -> bool:
        return self.hands_off.get(run.id) == run.state_key


def lookup_window(runs: list[PendingRun], observations: Observations, rules: RecoveryRules) -> list[PendingRun]:
    """The at most ``max_per_cycle`` stale runs a cycle reads claims, requeues and ECS for.

    The per-cycle cap comes before the per-run reads, so a cycle pays only for runs it
    could act on. First the runs awaiting their confirming observation (the next to
    act), then those not yet seen, then those last seen hands-off (a live claimer or
    task): each group oldest first, so many hands-off runs cannot starve the rest, and
    are looked at again whenever the window has room. Runs left out are not observed
    this cycle (their earlier observation is kept) and count as BatchLimit. ReportOnly
    writes nothing, so it looks at every stale run (as it reports them all).
    """
    cap = len(runs) if rules.action == REPORT_ONLY else rules.max_per_cycle
    def rank(run: PendingRun) -> tuple[int, datetime]:
        group = 0 if observations.awaiting(run) else 2 if observations.was_hands_off(run) else 1
        return group, run.pending_since

    return sorted(runs, key=rank)[: max(cap, 0)]


@dataclass
class RecoveryPlan:
    stale: int = 0
    reschedule: list[str] = field(default_factory=list)
    mark_crashed: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    report_only: list[str] = field(default_factory=list)  # recoverable, but the action is ReportOnly
    exhausted: list[str] = field(default_factory=list)  # reached maxRequeuesPerRun (also in their action's list)
    skipped: Counter[str] = field(default_factory=Counter)
    decisions: dict[str, Decision] = field(default_factory=dict)  # every stale run's decision
    acting: Counter[str] = field(default_factory=Counter)  # reasons of the runs acted on (or reported)
    notes: dict[str, str] = field(default_factory=dict)  # skip reason -> the oldest such run's words

    @property
    def to_write(self) -> int:
        return len(self.reschedule) + len(self.mark_crashed) + len(self.cancel)

    def by_action(self) -> dict[str, list[str]]:
        return {RESCHEDULE: self.reschedule, MARK_CRASHED: self.mark_crashed, CANCEL: self.cancel}

    def example(self, reason: str) -> str:
        """The words for the oldest stale run with this reason."""
        return self.notes.get(reason) or next((d.message for d in self.decisions.values() if d.reason == reason), "")


def plan_recovery(
    runs: list[PendingRun],
    *,
    claimers: dict[str, Claimer],
    infrastructure: dict[str, InfraReading],
    rules: RecoveryRules,
    observations: Observations,
    now: datetime,
    looked_at: set[str] | None = None,
) -> RecoveryPlan:
    """Decide, run by run, oldest first; at most ``max_per_cycle`` runs are acted on.

    ``looked_at``: the runs whose claims and infrastructure were read this cycle
    (``lookup_window``); the other stale runs are neither decided nor observed: BatchLimit.
    """
    plan = RecoveryPlan()
    stale = select_stale(runs, now, rules.pending_timeout)
    plan.stale = len(stale)
    observations.keep_only({r.id for r in stale})
    budget = rules.max_per_cycle
    for run in stale:
        if looked_at is not None and run.id not in looked_at:
            plan.skipped[BATCH_LIMIT] += 1
            continue
        decision = decide(run, claimers.get(run.id, Claimer.UNKNOWN), infrastructure.get(run.id, NOT_CHECKED),
                          rules, now)
        plan.decisions[run.id] = decision
        confirmed = observations.confirm(run, decision, now, rules.confirm_after)
        if not decision.recover:
            plan.skipped[decision.reason] += 1
            continue
        if not confirmed:
            plan.skipped[AWAITING_CONFIRMATION] += 1
            plan.notes.setdefault(AWAITING_CONFIRMATION, f"{decision.message}, seen so once (acting if still so "
                                                         f"{format_duration(rules.confirm_after)} later)")
            continue
        if budget <= 0:
            plan.skipped[BATCH_LIMIT] += 1
            continue
        plan.acting[decision.reason] += 1
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


# Nothing to write: the condition names the most telling reason runs were left alone.
_HELD = (
    (INFRASTRUCTURE_UNKNOWN, "Unknown", "ECS could not be asked (hold until it answers)"),
    (INFRASTRUCTURE_UNVERIFIED, "Unknown", "a task was reported but spec.ecs is not set or verifyInfrastructure is false"),
    (AWAITING_CONFIRMATION, "True", "seen recoverable once; acting if still so after one interval"),
    (CLAIMER_ALIVE, "True", "its claimer is online and may still start it"),
    (INFRASTRUCTURE_ALIVE, "True", "its ECS task is alive"),
    (BATCH_LIMIT, "True", "over maxRunsPerCycle"),
)


def recovery_condition(plan: RecoveryPlan, rules: RecoveryRules, *, dry_run: bool, failed: int = 0) -> Condition:
    """StaleRunsRecovered for a cycle's plan (and how many of its writes failed)."""
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(plan.skipped.items()))
    tail = f" Left alone: {skipped}." if skipped else ""
    if plan.stale == 0:
        return Condition(STALE_RUNS_RECOVERED, "True", "NoneStale",
                         f"No run has been PENDING longer than {format_duration(rules.pending_timeout)}.")
    why = _why(plan)
    if failed:
        return Condition(STALE_RUNS_RECOVERED, "False", "RecoveryFailed",
                         f"{failed} of {plan.to_write} state changes failed; retrying next cycle.{tail}")
    if dry_run and plan.to_write:
        return Condition(STALE_RUNS_RECOVERED, "False", "DryRun",
                         f"dryRun: would {_summary(plan)} ({why}); nothing was written.{tail}")
    if plan.report_only:
        return Condition(STALE_RUNS_RECOVERED, "False", "ReportOnly",
                         f"{len(plan.report_only)} stale run(s) are recoverable ({why}); action is ReportOnly.{tail}")
    if plan.exhausted and plan.to_write:
        return Condition(STALE_RUNS_RECOVERED, "True", "CapExhausted",
                         f"{_summary(plan)} ({why}); {len(plan.exhausted)} run(s) reached maxRequeuesPerRun="
                         f"{rules.max_requeues}.{tail}")
    if plan.to_write:
        return Condition(STALE_RUNS_RECOVERED, "True", "Recovered", f"{_summary(plan).capitalize()} ({why}).{tail}")
    for reason, status, generic in _HELD:
        if plan.skipped.get(reason):
            example = plan.example(reason) or generic
            return Condition(STALE_RUNS_RECOVERED, status, reason,  # type: ignore[arg-type]
                             f"{plan.stale} stale run(s), none recoverable now; e.g. {example}.{tail}")
    return Condition(STALE_RUNS_RECOVERED, "True", "NoneRecoverable", f"{plan.stale} stale run(s).{tail}")


def _why(plan: RecoveryPlan) -> str:
    """Each reason acted on, with the oldest run's words for it."""
    return "; ".join(f"{n} {reason}: {plan.example(reason)}" for reason, n in sorted(plan.acting.items()))


def _summary(plan: RecoveryPlan) -> str:
    parts = []
    if plan.reschedule:
        parts.append(f"reschedule {len(plan.reschedule)}")
    if plan.mark_crashed:
        parts.append(f"mark {len(plan.mark_crashed)} Crashed")
    if plan.cancel:
        parts.append(f"cancel {len(plan.cancel)}")
    return ", ".join(parts) + f" of {plan.stale} stale run(s)"

