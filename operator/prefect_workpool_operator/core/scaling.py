"""How many worker tasks the ECS service should run, from the pool's backlog.

One cycle's decision, on plain data: the backlog (Late/due runs, optionally PENDING
ones) wants ``ceil(backlog / backlogPerWorker)`` workers, clamped to
[minWorkers, maxWorkers]. The count then moves toward that number under brakes:

- *Fail static.* No fresh backlog from Prefect, or an unknown desiredCount from ECS,
  means no change: an outage must never look like an empty queue.
- *Stabilization* (as the Kubernetes HPA does it): going down, the target is the
  highest recommendation seen in the window, so the count falls only once the
  window no longer holds a higher value. A fresh memory (first cycle, or a restart
  without persisted status) counts the current desiredCount as seen now: the count
  never falls on the strength of one look.
- *Step limits and cooldowns* pace changes; a cooldown is per direction (demand
  rising right after a scale-down is served at once).
- *Scale from zero*: any backlog wants at least one worker, and starting the first
  worker ignores the scale-up cooldown (with none running, nothing serves the pool).
- *Bounds beat pacing*: a desiredCount outside [min, max] (changed by hand, or the
  bounds were edited) is brought inside in one cycle, whatever the step limits and
  cooldowns say. No path returns a target outside the bounds.

Other owners of desiredCount. An Application Auto Scaling target on the service
means AWS policies also write desiredCount; two controllers writing one field undo
each other on their own clocks, and the count ends up with whoever wrote last. A
deployment in progress means ECS (or a deploy tool) is replacing the worker tasks
right now. We chose ``onConflict: Hold`` as the default: leave desiredCount entirely
alone — even outside our bounds, since the other owner's bounds apply — and say so
in a ``Scaling=False/Conflict`` condition, so the fight is visible instead of
silent. Demand is still recorded, so stabilization is continuous when the conflict
ends. ``Override`` is for users who know the other owner is inert (a scalable
target left without policies) or who want the operator to win: the decision is
made as usual and its message names the conflict.

The caller persists ``decision.memory`` when it applied the target, and
``decision.memory_unapplied`` when it did not (dryRun, UpdateService failed), so a
cooldown never starts for a change that was not made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from prefect_workpool_operator.core.conditions import Condition, Status
from prefect_workpool_operator.core.durations import format_duration

SCALING = "Scaling"

HOLD, OVERRIDE = "Hold", "Override"

# Reasons of the Scaling condition (alerts and docs key on these spellings).
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
SCALED_FROM_ZERO = "ScaledFromZero"
BOUNDS_ENFORCED = "BoundsEnforced"
STEADY = "Steady"
AT_MAX = "AtMax"
AT_MIN = "AtMin"
STABILIZING = "Stabilizing"
COOLDOWN = "Cooldown"
HOLDING = "Holding"
CONFLICT = "Conflict"

_STATUS: dict[str, Status] = {HOLDING: "Unknown", CONFLICT: "False"}  # every other reason: True


@dataclass(frozen=True)
class ScalingRules:
    """``scaling`` as the decision reads it; built by ``core.scaling_plan.scaling_rules``
    (the spec models hold the defaults, so none are repeated here)."""

    min_workers: int
    max_workers: int
    backlog_per_worker: int
    include_pending: bool
    max_step_up: int  # per cycle
    max_step_down: int  # per cycle
    scale_down_stabilization: timedelta
    scale_up_cooldown: timedelta
    scale_down_cooldown: timedelta

    def __post_init__(self) -> None:
        # The CRD validates these too; a core that trusted its input could loop or divide by zero.
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 0 <= minWorkers <= maxWorkers, got {self.min_workers} and {self.max_workers}")
        if self.backlog_per_worker < 1 or self.max_step_up < 1 or self.max_step_down < 1:
            raise ValueError("backlogPerWorker, maxStepUp and maxStepDown must be at least 1")
        if min(self.scale_down_stabilization, self.scale_up_cooldown, self.scale_down_cooldown) < timedelta(0):
            raise ValueError("durations must not be negative")

    def clamp(self, count: int) -> int:
        return max(self.min_workers, min(self.max_workers, count))


@dataclass(frozen=True)
class Backlog:
    """What Prefect showed this cycle for the pool (or its selected queues)."""

    late: int  # Late runs, and Scheduled runs already due
    pending: int
    workers_online: int
    upcoming: int = 0  # Scheduled runs due within the lookahead (0 without one)


@dataclass(frozen=True)
class ServiceCounts:
    """The worker service as ECS described it this cycle."""

    desired: int
    running: int = 0
    pending: int = 0


@dataclass(frozen=True)
class ScalingObservation:
    backlog: Backlog | None  # None: Prefect data missing or too old to act on
    service: ServiceCounts | None  # None: ECS could not be asked or did not answer
    deployment_in_progress: bool = False
    autoscaling_target: bool = False  # an Application Auto Scaling target exists for the service


@dataclass(frozen=True)
class ScalingMemory:
    """What the decision needs from earlier cycles; the caller keeps it between them.

    ``history`` holds (time, recommendation) pairs of the stabilization window, oldest
    first. A pair is dropped as soon as a newer one is at least as high: it can never
    be the window's highest again. So the values strictly fall with time and the
    history stays short (at most maxWorkers - minWorkers + 1 pairs) whatever the interval.
    """

    history: tuple[tuple[datetime, int], ...] = ()
    last_scale_up: datetime | None = None
    last_scale_down: datetime | None = None


@dataclass(frozen=True)
class ScalingDecision:
    target: int | None  # the desiredCount to set; None: leave it as it is
    reason: str
    message: str
    recommendation: int | None  # what the backlog alone wants, within bounds; None when not computed
    memory: ScalingMemory  # to keep when the target was applied (or there was none)
    memory_unapplied: ScalingMemory  # to keep when a target was not applied
    current: int | None = None  # desiredCount as observed
    conflict: str | None = None  # another owner of desiredCount, when there is one


def backlog_size(backlog: Backlog, include_pending: bool) -> int:
    """The figure scaling follows (and CloudWatchMetric mode publishes)."""
    return backlog.late + backlog.upcoming + (backlog.pending if include_pending else 0)


def wanted_workers(backlog: Backlog, rules: ScalingRules) -> int:
    """Workers for the backlog before bounds; rounding up is what scales from zero."""
    return -(-backlog_size(backlog, rules.include_pending) // rules.backlog_per_worker)


def plan_scaling(
    observed: ScalingObservation,
    rules: ScalingRules,
    memory: ScalingMemory,
    *,
    on_conflict: str = HOLD,
    now: datetime,
) -> ScalingDecision:
    """This cycle's desiredCount (or no change) and why."""
    if on_conflict not in (HOLD, OVERRIDE):
        raise ValueError(f"onConflict must be {HOLD} or {OVERRIDE}, got {on_conflict!r}")
    if observed.backlog is None:
        return _hold(memory, "No fresh backlog from Prefect: desiredCount is left as it is.")
    if observed.service is None:
        return _hold(memory, "The ECS service's desiredCount is unknown: it is left as it is.")

    backlog, service, current = observed.backlog, observed.service, observed.service.desired
    wanted = wanted_workers(backlog, rules)
    recommendation = rules.clamp(wanted)
    seen = replace(memory, history=_remember(memory.history, rules, now, recommendation, rules.clamp(current)))
    conflict = _conflict(observed)
    figures = _figures(backlog, service, rules, wanted)

    def decision(target: int | None, reason: str, message: str, applied: ScalingMemory = seen) -> ScalingDecision:
        note = f" Overriding: {conflict}." if conflict and reason != CONFLICT else ""
        return ScalingDecision(target, reason, f"{message} {figures}.{note}", recommendation, applied, seen, current,
                               conflict)

    if conflict and on_conflict == HOLD:
        return decision(None, CONFLICT, f"{conflict[0].upper()}{conflict[1:]}; onConflict is Hold, "
                                        f"so desiredCount {current} is left alone.")

    window = rules.scale_down_stabilization
    ceiling = max(value for _, value in seen.history)
    # Up: follow the backlog. Down: no lower than the highest recommendation in the window.
    goal = recommendation if recommendation >= current else min(current, ceiling)
    stepped = min(goal, current + rules.max_step_up) if goal > current else max(goal, current - rules.max_step_down)
    target = rules.clamp(stepped)  # last, so bounds beat steps (and history from older bounds)

    if target == current:
        if recommendation < current:
            # Values strictly fall with time: the newest one this high is the last to expire.
            until = max(t for t, value in seen.history if value >= current) + window
            return decision(None, STABILIZING, f"desiredCount {current} held: the {format_duration(window)} window "
                                               f"still holds {ceiling}; it may fall in {format_duration(until - now)}.")
        if wanted > rules.max_workers:
            return decision(None, AT_MAX, f"desiredCount {current} is maxWorkers.")
        if wanted < rules.min_workers:
            return decision(None, AT_MIN, f"desiredCount {current} is minWorkers.")
        return decision(None, STEADY, f"desiredCount {current} matches the backlog.")

    up = target > current
    change = f"desiredCount {current} -> {target}"
    if not rules.min_workers <= current <= rules.max_workers:
        return decision(target, BOUNDS_ENFORCED,
                        f"{change}: {current} was outside [{rules.min_workers}, {rules.max_workers}].",
                        _scaled(seen, up, now))
    from_zero = current == 0
    last, cooldown = (memory.last_scale_up, rules.scale_up_cooldown) if up else \
        (memory.last_scale_down, rules.scale_down_cooldown)
    if not from_zero and last is not None and now - last < cooldown:
        direction = "scale-up" if up else "scale-down"
        return decision(None, COOLDOWN, f"desiredCount {current} held: {direction} cooldown for "
                                        f"{format_duration(last + cooldown - now)} more (wants {target}).")
    if stepped != goal:
        change += f" (step limit {rules.max_step_up if up else rules.max_step_down}, wants {goal})"
    if not up and goal > recommendation:
        change += f": {goal} is the highest recommendation in the {format_duration(window)} window"
    reason = SCALED_FROM_ZERO if from_zero else SCALED_UP if up else SCALED_DOWN
    return decision(target, reason, f"{change}.", _scaled(seen, up, now))


def scaling_condition(decision: ScalingDecision) -> Condition:
    """The Scaling condition: Unknown while holding for data, False in a held conflict, True otherwise."""
    return Condition(SCALING, _STATUS.get(decision.reason, "True"), decision.reason, decision.message)


def _hold(memory: ScalingMemory, message: str) -> ScalingDecision:
    # Nothing is learned from a cycle that saw nothing: the memory stays as it was.
    return ScalingDecision(None, HOLDING, message, None, memory, memory)


def _remember(
    history: tuple[tuple[datetime, int], ...], rules: ScalingRules, now: datetime, recommendation: int, current: int
) -> tuple[tuple[datetime, int], ...]:
    window = rules.scale_down_stabilization
    kept = [(t, value) for t, value in history if now - t < window]
    if not history and window > timedelta(0):
        kept.append((now, current))  # a fresh memory has watched nothing yet: hold what runs for one window
    kept.append((now, recommendation))
    compact: list[tuple[datetime, int]] = []
    for t, value in kept:
        while compact and compact[-1][1] <= value:
            compact.pop()
        compact.append((t, value))
    return tuple(compact)


def _scaled(memory: ScalingMemory, up: bool, now: datetime) -> ScalingMemory:
    return replace(memory, last_scale_up=now) if up else replace(memory, last_scale_down=now)


def _conflict(observed: ScalingObservation) -> str | None:
    owners = []
    if observed.autoscaling_target:
        owners.append("the service has an Application Auto Scaling target")
    if observed.deployment_in_progress:
        owners.append("a deployment of the service is in progress")
    return " and ".join(owners) or None


def _figures(backlog: Backlog, service: ServiceCounts, rules: ScalingRules, wanted: int) -> str:
    size = f"{backlog.late} late" + (f" + {backlog.upcoming} due soon" if backlog.upcoming else "")
    if rules.include_pending:
        size += f" + {backlog.pending} pending"
    return (f"Backlog {size} at {rules.backlog_per_worker} per worker wants {wanted} worker(s); "
            f"{backlog.workers_online} online, ECS {service.running} running, {service.pending} pending")
