"""``why``: the recovery rule's answer for one run, in words (pure; the reads are cli/why.py's).

Everything here comes from ``core.stale``: ``decide`` makes the decision, and the row
printed is the row of its table that the decision came from. One reading only: the
operator acts on a "recover" only when two readings an interval apart agree
(``stale_plan.Observations``), which a single look cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prefect_workpool_operator.core import stale
from prefect_workpool_operator.core.conditions import format_time
from prefect_workpool_operator.core.durations import format_duration
from prefect_workpool_operator.core.infrastructure import RUN_ID_TAG
from prefect_workpool_operator.core.stale import Claimer, Decision, InfraReading, Infrastructure, PendingRun, RecoveryRules, WorkerLifecycle

# Exit codes of `why` (documented in docs/why.md).
EXIT_DECIDED = 0  # the answer was printed (whatever it is)
EXIT_READ_FAILED = 1  # Kubernetes, a Secret or Prefect could not be read
EXIT_USAGE = 2  # bad arguments
EXIT_UNKNOWN_POLICY = 3  # no such policy, or its spec is invalid
EXIT_UNKNOWN_RUN = 4  # no such run, or not in the policy's pool / queues / tags

# The table of core.stale.decide, row by row (as in docs/design.md).
ROWS = {
    1: ("any", "alive (a task starting or running)", "hands off: InfrastructureAlive"),
    2: ("any", "proven gone (its task STOPPED or unknown to ECS)", "recover: TaskGone"),
    3: ("any", "unknown (throttled, call budget spent, AWS unreachable)", "hold: InfrastructureUnknown"),
    4: ("ONLINE, same process", "no task known or found (or no ECS check)",
        "hands off: ClaimerAlive (past hardTimeout with hardTimeoutOverridesLiveClaimer: recover)"),
    5: ("OFFLINE, restarted, stopped or unknown", "no task known, none found by tag", "recover: ClaimerGone"),
    6: ("OFFLINE, restarted, stopped or unknown", "not checked, and the run never reported a task",
        "recover: ClaimerGone (infrastructure not verified)"),
    7: ("OFFLINE, restarted, stopped or unknown", "not checked, but a task was reported",
        "hold: InfrastructureUnverified (past hardTimeout: recover, HardTimeout)"),
}

ONE_READING = ("one reading: the operator acts on a \"recover\" only when two readings at least {interval} apart "
               "both say so (and none says hands off in between); `why` takes a single reading and cannot see "
               "the operator's earlier ones.")


@dataclass(frozen=True)
class RunFacts:
    """What Prefect says about the run, beyond what the rule reads."""

    state_type: str
    state_name: str
    work_pool: str | None
    work_queue: str | None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scope:
    """The runs the policy's recovery looks at."""

    pool: str
    queues: tuple[str, ...] = ()  # empty: every queue of the pool
    tags: tuple[str, ...] = ()  # every one required


@dataclass(frozen=True)
class Reading:
    """One reading of one run, as the operator's cycle would take it."""

    run: PendingRun  # with its claim, claimer and requeue count
    claimer: Claimer
    lifecycle: WorkerLifecycle | None
    infrastructure: InfraReading
    not_checked_because: str = ""  # why there was no ECS check (NOT_CHECKED)


@dataclass(frozen=True)
class Answer:
    verdict: str  # NotPending, NotStale, HandsOff, Hold, Recover, RecoveryOff
    lines: tuple[tuple[str, str], ...]
    row: int | None = None
    decision: Decision | None = None

    def text(self) -> str:
        width = max(len(label) for label, _ in self.lines) + 2
        return "\n".join(f"{label + ':':<{width}}{value}" for label, value in self.lines) + "\n"


def scope_problem(run_id: str, facts: RunFacts, scope: Scope) -> str | None:
    """Why the run is not one of the policy's (None when it is)."""
    if facts.work_pool != scope.pool:
        return f"run {run_id} is in work pool {facts.work_pool!r}, not the policy's {scope.pool!r}"
    if scope.queues and facts.work_queue not in scope.queues:
        return f"run {run_id} is in work queue {facts.work_queue!r}, outside the policy's {', '.join(scope.queues)}"
    missing = [t for t in scope.tags if t not in facts.tags]
    if missing:
        return f"run {run_id} lacks the tag(s) the policy's staleRuns.tags require: {', '.join(missing)}"
    return None


def rule_row(decision: Decision, infra: Infrastructure) -> int:
    """The row of ``stale.decide``'s table a decision came from."""
    if decision.reason == stale.CLAIMER_GONE:
        return 5 if infra is Infrastructure.NONE_FOUND else 6
    return {
        stale.INFRASTRUCTURE_ALIVE: 1, stale.TASK_GONE: 2, stale.INFRASTRUCTURE_UNKNOWN: 3,
        stale.CLAIMER_ALIVE: 4, stale.HARD_TIMEOUT_OVERRIDE: 4,
        stale.INFRASTRUCTURE_UNVERIFIED: 7, stale.HARD_TIMEOUT: 7,
    }[decision.reason]


def not_pending(policy: str, run_id: str, facts: RunFacts) -> Answer:
    return Answer("NotPending", (
        ("Policy", policy), ("Run", run_id),
        ("State", f"{facts.state_type} ({facts.state_name})"),
        ("Decision", "nothing to do: recovery only touches runs that are PENDING (this one moved on)"),
    ))


def recovery_off(policy: str, run_id: str, why: str) -> Answer:
    return Answer("RecoveryOff", (("Policy", policy), ("Run", run_id), ("Decision", f"nothing to do: {why}")))


def explain(policy: str, facts: RunFacts, reading: Reading, rules: RecoveryRules, *, now: datetime,
            dry_run: bool = False, suspended: bool = False) -> Answer:
    """The answer for a PENDING run of the policy's scope."""
    run = reading.run
    age = run.pending_for(now)
    lines: list[tuple[str, str]] = [("Policy", policy), ("Run", run.id)]
    threshold = format_duration(rules.pending_timeout)
    lines.append(("State", f"{facts.state_type} ({facts.state_name}) for {format_duration(age)}, since "
                           f"{format_time(run.pending_since)}; stale at pendingTimeout {threshold}"))
    lines.append(("Claimer", _claimer(run, reading.claimer, reading.lifecycle)))
    lines.append(("Infrastructure", _infrastructure(run, reading)))
    lines.append(("Requeues", f"{run.requeues} by this operator (maxRequeuesPerRun {rules.max_requeues}, "
                              f"then {rules.on_exhausted})"))
    decision = stale.decide(run, reading.claimer, reading.infrastructure, rules, now)
    row = rule_row(decision, reading.infrastructure.state)
    claimer_col, infra_col, outcome = ROWS[row]
    lines.append(("Rule", f"row {row} of core.stale.decide: claimer {claimer_col} × infrastructure {infra_col} "
                          f"→ {outcome}"))
    if not stale.is_stale(run, now, rules.pending_timeout):
        left = format_duration(rules.pending_timeout - age)
        lines.append(("Decision", f"not stale yet ({left} to go): the rule does not apply; if nothing changes "
                                  f"by then: {decision.message}"))
        return Answer("NotStale", tuple(lines), row, decision)
    verdict = "Recover" if decision.recover else "HandsOff" if decision.hands_off else "Hold"
    word = {"Recover": "recover", "HandsOff": "hands off", "Hold": "hold"}[verdict]
    lines.append(("Decision", f"{word} ({decision.reason}): {decision.message}"))
    if decision.recover:
        lines.append(("Action", _action(run, rules, dry_run=dry_run, suspended=suspended)))
        lines.append(("Note", ONE_READING.format(interval=format_duration(rules.confirm_after))))
    return Answer(verdict, tuple(lines), row, decision)


def _claimer(run: PendingRun, claimer: Claimer, lifecycle: WorkerLifecycle | None) -> str:
    if run.claimer is None:
        return "none known (no prefect.worker.name label, no prefect.worker.submitted-flow-run event)"
    claim = (f"claimed at {format_time(run.claimed_at)} (submitted-flow-run event)" if run.claimed_at
             else "no submitted-flow-run event (the PENDING time stands in for the claim)")
    life = lifecycle or WorkerLifecycle()
    events = [f"{name} {format_time(at)}" for name, at in (("started", life.started), ("stopped", life.stopped)) if at]
    seen = f"; latest worker events: {', '.join(events)}" if events else "; no started/stopped event since the claim"
    words = {
        Claimer.ONLINE: "online, the same process that claimed it",
        Claimer.OFFLINE: "not online in the pool",
        Claimer.RESTARTED: "restarted since the claim (claims forgotten)",
        Claimer.STOPPED: "stopped since the claim",
        Claimer.UNKNOWN: "unknown",
    }[claimer]
    return f"{run.claimer!r}: {words}; {claim}{seen}"


def _infrastructure(run: PendingRun, reading: Reading) -> str:
    infra = reading.infrastructure
    if infra.state is Infrastructure.ALIVE:
        how = f"its task {run.infrastructure_pid}" if run.infrastructure_pid else f"a task tagged {RUN_ID_TAG}={run.id}"
        return f"alive: {how} is starting or running"
    if infra.state is Infrastructure.GONE:
        return f"gone: {infra.detail or 'STOPPED'}" + (f" (task {run.infrastructure_pid})" if run.infrastructure_pid else "")
    if infra.state is Infrastructure.NONE_FOUND:
        return f"none: no task known for the run and none running tagged {RUN_ID_TAG}={run.id}"
    if infra.state is Infrastructure.UNKNOWN:
        return f"unknown: {infra.detail or 'ECS did not answer'}"
    evidence = ("a task was reported (" + (f"pid {run.infrastructure_pid}" if run.infrastructure_pid
                                           else "executed-flow-run event") + ")"
                if run.has_infrastructure_evidence else "the run never reported a task")
    return f"not checked ({reading.not_checked_because or 'no ECS check'}); {evidence}"


def _action(run: PendingRun, rules: RecoveryRules, *, dry_run: bool, suspended: bool) -> str:
    action = rules.action
    text = action
    if action == stale.RESCHEDULE:
        if run.requeues >= rules.max_requeues:
            action = rules.on_exhausted
            text = (f"cap exhausted: requeued {run.requeues} time(s), maxRequeuesPerRun {rules.max_requeues} → "
                    f"onExhausted {action}")
        else:
            text = f"Reschedule (requeue {run.requeues + 1} of at most {rules.max_requeues})"
    if action == stale.REPORT_ONLY:
        text += "; ReportOnly: reported, nothing written"
    if suspended:
        return f"{text}; but the policy is suspended: nothing is done"
    if dry_run:
        return f"{text}; but dryRun: nothing is written"
    return text
