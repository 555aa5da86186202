"""Which PENDING runs are stale, whose they are, and what the rule says of each.

The Prefect API has no compare-and-set: a run that starts RUNNING between our read
and our write can still be moved back to SCHEDULED (FACTS.md measured it). So the
decision rests on *ownership*, not timing: a stale run is touched only on proof that
no one can still act on it. ``decide`` is that rule, one table, for one run on one
observation; ``core.stale_plan`` turns a cycle's decisions into what it acts on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prefect_workpool_operator.core.durations import format_duration

# Workers claim runs up to PREFECT_WORKER_PREFETCH_SECONDS (10 s) before their
# expected start, so a run's PENDING time can begin that much before it.
PREFETCH = timedelta(seconds=10)

RESCHEDULE, MARK_CRASHED, CANCEL, REPORT_ONLY = "Reschedule", "MarkCrashed", "Cancel", "ReportOnly"

# Reasons of the decision: part of the interface (status figures, condition reasons).
INFRASTRUCTURE_ALIVE = "InfrastructureAlive"  # hands off
CLAIMER_ALIVE = "ClaimerAlive"  # hands off
INFRASTRUCTURE_UNKNOWN = "InfrastructureUnknown"  # hold
INFRASTRUCTURE_UNVERIFIED = "InfrastructureUnverified"  # hold
TASK_GONE = "TaskGone"  # recover
CLAIMER_GONE = "ClaimerGone"  # recover
HARD_TIMEOUT = "HardTimeout"  # recover (opt-in)
HARD_TIMEOUT_OVERRIDE = "HardTimeoutOverridesLiveClaimer"  # recover (explicit opt-in, double-run risk)
# Not decisions: a recoverable run seen so once, and a run over the per-cycle limit.
AWAITING_CONFIRMATION = "AwaitingConfirmation"
BATCH_LIMIT = "BatchLimit"

STALE_RUNS_RECOVERED = "StaleRunsRecovered"


class Infrastructure(enum.Enum):
    """What the infrastructure check said about a run's task."""

    ALIVE = "alive"  # a task for the run is starting or running (by its pid, or its run-id tag)
    GONE = "gone"  # its known task is STOPPED or no longer known to ECS
    NONE_FOUND = "none-found"  # no task known for the run, none found by its run-id tag
    UNKNOWN = "unknown"  # the check failed (throttled, budget spent, AWS unreachable)
    NOT_CHECKED = "not-checked"  # no check configured (no spec.ecs, or verifyInfrastructure false)


@dataclass(frozen=True)
class InfraReading:
    state: Infrastructure
    # GONE: the proof ("stopCode TaskFailedToStart: …", "task unknown to ECS");
    # UNKNOWN: why it could not be checked.
    detail: str = ""


NOT_CHECKED = InfraReading(Infrastructure.NOT_CHECKED)


class Claimer(enum.Enum):
    """The worker that claimed a run, as far as Prefect tells."""

    ONLINE = "online"  # heartbeating, and not started or stopped since the claim: the same process
    OFFLINE = "offline"
    RESTARTED = "restarted"  # a prefect.worker.started event after the claim: a new process, claims forgotten
    STOPPED = "stopped"  # a prefect.worker.stopped event after the claim
    UNKNOWN = "unknown"  # no worker label, no submitted-flow-run event


@dataclass(frozen=True)
class WorkerLifecycle:
    """A worker name's latest ``prefect.worker.started`` / ``stopped`` events (worker clock)."""

    started: datetime | None = None
    stopped: datetime | None = None


@dataclass(frozen=True)
class PendingRun:
    id: str
    pending_since: datetime  # the PENDING state's timestamp (server clock)
    infrastructure_pid: str | None = None
    claimer: str | None = None  # worker named by its label or prefect.worker.submitted-flow-run event
    claimed_at: datetime | None = None  # that event's time (worker clock, as its started/stopped events)
    submission_reported: bool = False  # prefect.worker.executed-flow-run seen: infrastructure was created
    requeues: int = 0  # earlier requeues by this operator
    state_id: str | None = None  # the PENDING state's id: a new claim is a new state

    @property
    def state_key(self) -> tuple[str | None, datetime]:
        """Which PENDING state this is: a re-claim (new state) is never the same reading."""
        return self.state_id, self.pending_since

    def pending_for(self, now: datetime) -> timedelta:
        return now - self.pending_since

    @property
    def has_infrastructure_evidence(self) -> bool:
        return bool(self.infrastructure_pid) or self.submission_reported


@dataclass(frozen=True)
class RecoveryRules:
    """``staleRuns`` as the decision reads it; built by ``core.recovery_plan.recovery_rules``
    (the spec models hold the defaults, so none are repeated here)."""

    pending_timeout: timedelta
    hard_timeout: timedelta | None  # opt-in
    hard_timeout_overrides_live_claimer: bool
    confirm_after: timedelta  # the policy's interval: gap between the two observations
    action: str
    max_requeues: int
    on_exhausted: str
    max_per_cycle: int


@dataclass(frozen=True)
class Decision:
    reason: str
    message: str  # the true reason, in words: goes into the run's state message, Events, the condition
    recover: bool = False
    hands_off: bool = False  # someone can still act on the run: forget any earlier recoverable reading
    double_run_risk: bool = False

    @property
    def hold(self) -> bool:
        return not self.recover and not self.hands_off


def claimer_status(run: PendingRun, online_workers: set[str] | frozenset[str],
                   lifecycle: dict[str, WorkerLifecycle]) -> Claimer:
    """ONLINE only for the very process that claimed the run.

    A worker restarted under the same name heartbeats under that name but has
    forgotten its claims; its ``started`` event after the claim tells it apart.
    Claim and lifecycle times both come from the worker's clock; without the
    submitted-flow-run event the PENDING time (server clock) stands in.
    """
    if run.claimer is None:
        return Claimer.UNKNOWN
    claimed = run.claimed_at or run.pending_since
    life = lifecycle.get(run.claimer) or WorkerLifecycle()
    if life.stopped is not None and life.stopped > claimed:
        return Claimer.STOPPED
    if life.started is not None and life.started > claimed:
        return Claimer.RESTARTED
    return Claimer.ONLINE if run.claimer in online_workers else Claimer.OFFLINE


def decide(run: PendingRun, claimer: Claimer, infra: InfraReading, rules: RecoveryRules, now: datetime) -> Decision:
    """The recovery rule for one run PENDING past ``pendingTimeout``, on one observation.

    ====================================  ==============================  =========================================
    claimer                               infrastructure                  decision
    ====================================  ==============================  =========================================
    any                                   ALIVE (task starting/running)   hands off: InfrastructureAlive
    any                                   GONE (known task STOPPED or     recover: TaskGone, naming the proof
                                          unknown to ECS)                 (stopCode / stoppedReason / unknown)
    any                                   UNKNOWN (throttled, budget,     hold: InfrastructureUnknown
                                          unreachable)
    ONLINE, same process                  NONE_FOUND or NOT_CHECKED       hands off: ClaimerAlive, with the age;
                                                                          past hardTimeout *and* with
                                                                          hardTimeoutOverridesLiveClaimer: recover,
                                                                          HardTimeoutOverridesLiveClaimer (the
                                                                          flow may run twice)
    OFFLINE, RESTARTED, STOPPED, UNKNOWN  NONE_FOUND                      recover: ClaimerGone
    OFFLINE, RESTARTED, STOPPED, UNKNOWN  NOT_CHECKED, no sign of a task  recover: ClaimerGone (not verified)
    OFFLINE, RESTARTED, STOPPED, UNKNOWN  NOT_CHECKED, a task was         hold: InfrastructureUnverified;
                                          reported (pid, executed event)  past hardTimeout: recover, HardTimeout
    ====================================  ==============================  =========================================

    A "recover" acts only once ``stale_plan.Observations.confirm`` saw it on two
    observations at least ``confirm_after`` apart. hardTimeout is opt-in and never
    overrides a live task or an unknown answer.
    """
    age = format_duration(run.pending_for(now))
    state = infra.state
    if state is Infrastructure.ALIVE:
        return Decision(INFRASTRUCTURE_ALIVE, "its ECS task is alive", hands_off=True)
    if state is Infrastructure.GONE:
        return Decision(TASK_GONE, f"its ECS task is gone ({infra.detail or 'STOPPED'})", recover=True)
    if state is Infrastructure.UNKNOWN:
        why = f" ({infra.detail})" if infra.detail else ""
        return Decision(INFRASTRUCTURE_UNKNOWN, f"its ECS task could not be checked{why}")
    past_hard = rules.hard_timeout is not None and run.pending_for(now) >= rules.hard_timeout
    unverified = " (infrastructure not verified: no ECS check configured)" if state is Infrastructure.NOT_CHECKED else ""
    if claimer is Claimer.ONLINE:
        if past_hard and rules.hard_timeout_overrides_live_claimer:
            return Decision(
                HARD_TIMEOUT_OVERRIDE,
                f"PENDING for {age}, past hardTimeout, while its claimer {run.claimer!r} is still online "
                "(hardTimeoutOverridesLiveClaimer): the flow may run twice if that worker still starts it",
                recover=True, double_run_risk=True,
            )
        return Decision(CLAIMER_ALIVE, f"its claimer {run.claimer!r} is online and may still start it "
                                       f"(PENDING for {age})", hands_off=True)
    gone = _claimer_gone(run, claimer)
    if state is Infrastructure.NONE_FOUND:
        return Decision(CLAIMER_GONE, f"{gone} and no ECS task exists for it", recover=True)
    if not run.has_infrastructure_evidence:
        return Decision(CLAIMER_GONE, f"{gone} before creating any infrastructure{unverified}", recover=True)
    if past_hard:
        return Decision(HARD_TIMEOUT, f"PENDING for {age}, past hardTimeout; {gone} and its reported "
                                      "infrastructure could not be verified", recover=True)
    return Decision(INFRASTRUCTURE_UNVERIFIED,
                    f"{gone}, but a task was reported for it and no ECS check is configured to verify it")


def _claimer_gone(run: PendingRun, claimer: Claimer) -> str:
    return {
        Claimer.OFFLINE: f"its claimer {run.claimer!r} is offline",
        Claimer.RESTARTED: f"its claimer {run.claimer!r} restarted since the claim",
        Claimer.STOPPED: f"its claimer {run.claimer!r} stopped since the claim",
    }.get(claimer, "no worker is known to have claimed it")


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


def select_stale(runs: list[PendingRun], now: datetime, pending_timeout: timedelta) -> list[PendingRun]:
    """The one staleness decision, used by observe (what to look up) and by the plan (what
    to decide): the runs PENDING at least ``pending_timeout``, oldest first. Idempotent,
    so the plan applied to observe's selection decides exactly what observe selected."""
    return sorted((r for r in runs if is_stale(r, now, pending_timeout)), key=lambda r: (r.pending_since, r.id))


@dataclass
class QuietPending:
    """The PENDING runs of a scope not stale when last listed: what lets a cycle list less.

    A remembered run is no concern before its own threshold (it can only leave PENDING,
    or re-enter later, hence fresher), so a cycle lists only the PENDING runs it does not
    remember plus the remembered ones that could be stale by now (the server leaves the
    others out by id). Stale runs are never remembered: listed every cycle (the second
    reading needs them). When nothing remembered or listed is stale, the cycle lists every
    PENDING run not remembered (no expected-start cutoff), so afterwards every PENDING run
    is known and a cycle in which no run of the pool changed can skip the listing.
    """

    key: str = ""  # the scope, tags and pendingTimeout the runs were listed for
    pending: dict[str, datetime] = field(default_factory=dict)  # run id -> its PENDING state's time
    limit: int = 10_000  # beyond this many ids, the filter body grows too large: list in full
    stale_listed: bool = False  # the last listing held stale runs

    def listable(self, key: str) -> bool:
        """Whether this cycle may leave remembered runs out of its listing."""
        return key == self.key and len(self.pending) <= self.limit

    def usable(self, key: str, now: datetime, pending_timeout: timedelta) -> bool:
        """Whether no remembered run can be stale yet and the last listing held none."""
        if not self.listable(key) or self.stale_listed:
            return False
        return all(now - since < pending_timeout for since in self.pending.values())

    def not_due(self, now: datetime, pending_timeout: timedelta) -> dict[str, datetime]:
        """The remembered runs that cannot be stale yet: the server may leave them out."""
        return {k: since for k, since in self.pending.items() if now - since < pending_timeout}

    def remember(self, key: str, runs: list[PendingRun], now: datetime, pending_timeout: timedelta) -> None:
        """A full listing's runs: the stale ones are not remembered."""
        self.key = key
        self.update(runs, now, pending_timeout, {})

    def update(self, runs: list[PendingRun], now: datetime, pending_timeout: timedelta,
               kept: dict[str, datetime]) -> None:
        """After a listing that left ``kept`` out: those, and the listed runs not stale."""
        stale_ids = {r.id for r in select_stale(runs, now, pending_timeout)}
        self.pending = {**kept, **{r.id: r.pending_since for r in runs if r.id not in stale_ids}}
        self.stale_listed = bool(stale_ids)

    def add(self, runs: list[PendingRun]) -> None:
        self.pending.update((r.id, r.pending_since) for r in runs)

    def forget(self) -> None:
        self.key, self.pending, self.stale_listed = "", {}, False
