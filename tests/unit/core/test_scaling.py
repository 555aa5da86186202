"""The scaling decision on plain data: bounds, steps, stabilization, cooldowns, fail-static, conflicts."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from itertools import product

import pytest

from prefect_workpool_operator.core import scaling
from tests.support import spec_rules
from prefect_workpool_operator.core.scaling import (
    Backlog,
    ScalingMemory,
    ScalingObservation,
    ScalingRules,
    ServiceCounts,
    plan_scaling,
    scaling_condition,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=5)
# No brakes but the window, so each test turns on only the one it is about.
RULES = spec_rules.scaling(1, 10, backlog_per_worker=5, max_step_up=100, max_step_down=100,
                           scale_down_stabilization=WINDOW, scale_up_cooldown=timedelta(0),
                           scale_down_cooldown=timedelta(0), include_pending=False)
# The window has been watched and held nothing above 1.
CALM = ScalingMemory(history=((NOW - WINDOW + timedelta(seconds=1), 1),))


def observed(late: int = 0, pending: int = 0, *, desired: int | None = 1, online: int = 1,
             prefect: bool = True, **flags: bool) -> ScalingObservation:
    service = ServiceCounts(desired, running=desired) if desired is not None else None
    backlog = Backlog(late, pending, online) if prefect else None
    return ScalingObservation(backlog, service, **flags)


def decide(obs: ScalingObservation, memory: ScalingMemory = CALM, rules: ScalingRules = RULES, at: datetime = NOW,
           on_conflict: str = scaling.HOLD) -> scaling.ScalingDecision:
    return plan_scaling(obs, rules, memory, on_conflict=on_conflict, now=at)


def run_cycles(lates: list[int | None], *, rules: ScalingRules = RULES, desired: int = 1,
               every: timedelta = timedelta(seconds=30), memory: ScalingMemory = ScalingMemory()) -> list[int]:
    """desiredCount after each cycle, applying every target as the operator would."""
    counts = []
    for i, late in enumerate(lates):
        obs = observed(late or 0, desired=desired, prefect=late is not None)  # None: Prefect unreachable
        d = plan_scaling(obs, rules, memory, now=NOW + i * every)
        desired, memory = d.target if d.target is not None else desired, d.memory
        counts.append(desired)
    return counts


@pytest.mark.parametrize(
    ("late", "pending", "include_pending", "want"),
    [(0, 0, False, 1), (1, 0, False, 1), (5, 0, False, 1), (6, 0, False, 2), (23, 9, False, 5),
     (23, 9, True, 7), (0, 9, False, 1), (1000, 0, False, 10)],
)
def test_recommendation_is_backlog_per_worker_rounded_up_within_bounds(late, pending, include_pending, want) -> None:
    rules = replace(RULES, include_pending=include_pending)
    assert decide(observed(late, pending, desired=want), rules=rules).recommendation == want


def test_bounds_and_their_reasons() -> None:
    up = decide(observed(1000, desired=3))
    assert (up.target, up.reason) == (10, scaling.SCALED_UP)
    assert "wants 200 worker(s)" in up.message
    at_max = decide(observed(1000, desired=10))
    assert (at_max.target, at_max.reason) == (None, scaling.AT_MAX)
    at_min = decide(observed(0, desired=1))
    assert (at_min.target, at_min.reason) == (None, scaling.AT_MIN)
    steady = decide(observed(12, desired=3))
    assert (steady.target, steady.reason) == (None, scaling.STEADY)


def test_no_path_leaves_the_bounds() -> None:
    # Every current count in and around the bounds, any backlog, a history from wider
    # bounds, each brake: the target is None or inside [min, max].
    rules = replace(RULES, min_workers=2, max_workers=6, max_step_up=1, max_step_down=1,
                    scale_up_cooldown=timedelta(minutes=1), scale_down_cooldown=timedelta(minutes=1))
    histories = [(), ((NOW - timedelta(minutes=1), 50),), ((NOW - timedelta(minutes=1), 0),)]
    recent = [None, NOW - timedelta(seconds=10)]
    for current, late, history, last, flag, policy in product(range(0, 12), (0, 1, 9, 31, 500), histories, recent,
                                                              (False, True), (scaling.HOLD, scaling.OVERRIDE)):
        memory = ScalingMemory(history, last_scale_up=last, last_scale_down=last)
        d = decide(observed(late, desired=current, autoscaling_target=flag), memory, rules, on_conflict=policy)
        assert d.target is None or 2 <= d.target <= 6, (current, late, history, last, flag, policy, d)
        assert d.recommendation is None or 2 <= d.recommendation <= 6


def test_step_limits_per_cycle() -> None:
    rules = replace(RULES, max_step_up=2, max_step_down=3)
    up = decide(observed(50, desired=1), rules=rules)
    assert (up.target, up.reason, up.recommendation) == (3, scaling.SCALED_UP, 10)
    assert "step limit 2, wants 10" in up.message
    down = decide(observed(0, desired=10), rules=rules)
    assert (down.target, down.reason) == (7, scaling.SCALED_DOWN)
    # Stepping carries on cycle after cycle.
    assert run_cycles([50] * 6, rules=rules) == [3, 5, 7, 9, 10, 10]


def test_stabilization_falls_only_after_the_window() -> None:
    # 40 late at t=0 wants 8; the backlog is gone from the next cycle on (every 30 s).
    counts = run_cycles([40] + [0] * 12)
    assert counts[0] == 8
    assert counts[1:10] == [8] * 9  # t = 30 s .. 4m30s: the window still holds 8
    assert counts[10:] == [1, 1, 1]  # t = 5m: the recommendation of t=0 has left the window


def test_a_prefect_outage_neither_lowers_nor_prolongs_the_window() -> None:
    assert run_cycles([40, None, None, None, 0, 0, 0, 0, 0, 0, 0, 0]) == [8] * 10 + [1, 1]
    assert run_cycles([40] + [None] * 20) == [8] * 21


def test_stabilization_falls_to_the_highest_value_left_in_the_window() -> None:
    memory = ScalingMemory(history=((NOW - timedelta(minutes=4), 8), (NOW - timedelta(minutes=2), 4)))
    d = decide(observed(0, desired=8), memory)
    assert (d.target, d.reason) == (None, scaling.STABILIZING)
    assert "may fall in 1m" in d.message
    later = decide(observed(0, desired=8), d.memory, at=NOW + timedelta(minutes=1))
    assert (later.target, later.reason) == (4, scaling.SCALED_DOWN)
    assert "4 is the highest recommendation in the 5m window" in later.message
    last = decide(observed(0, desired=4), later.memory, at=NOW + timedelta(minutes=3))
    assert (last.target, last.reason) == (1, scaling.SCALED_DOWN)


def test_rising_demand_is_followed_at_once_despite_the_window() -> None:
    memory = ScalingMemory(history=((NOW - timedelta(minutes=1), 2),))
    assert decide(observed(30, desired=2), memory).target == 6


def test_a_fresh_memory_holds_the_current_count_for_one_window() -> None:
    # First cycle after a restart without persisted status: one low reading is not enough to fall.
    d = decide(observed(0, desired=6), ScalingMemory())
    assert (d.target, d.reason) == (None, scaling.STABILIZING)
    assert d.memory.history == ((NOW, 6), (NOW, 1))
    assert run_cycles([0] * 12, desired=6) == [6] * 10 + [1, 1]


def test_a_long_interval_does_not_hold_the_count_forever() -> None:
    # Cycles further apart than the window: only the very first look seeds the memory.
    assert run_cycles([0] * 3, desired=6, every=2 * WINDOW) == [6, 1, 1]


def test_history_stays_short() -> None:
    memory = ScalingMemory()
    for i in range(2000):
        d = plan_scaling(observed((i * 37) % 60, desired=5), RULES, memory, now=NOW + i * timedelta(seconds=1))
        memory = d.memory
        values = [v for _, v in memory.history]
        assert values == sorted(set(values), reverse=True)  # strictly falling with time
    assert len(memory.history) <= RULES.max_workers - RULES.min_workers + 1


def test_zero_window_means_no_stabilization() -> None:
    rules = replace(RULES, scale_down_stabilization=timedelta(0))
    assert decide(observed(0, desired=6), ScalingMemory(), rules).target == 1


@pytest.mark.parametrize("cooldown", [timedelta(0), timedelta(minutes=10)])
def test_scale_from_zero(cooldown: timedelta) -> None:
    rules = replace(RULES, min_workers=0, scale_up_cooldown=cooldown)
    memory = replace(CALM, last_scale_up=NOW - timedelta(seconds=5))  # the up cooldown does not delay the first worker
    d = decide(observed(1, desired=0, online=0), memory, rules)
    assert (d.target, d.reason) == (1, scaling.SCALED_FROM_ZERO)
    assert d.memory.last_scale_up == NOW
    assert decide(observed(0, desired=0, online=0), memory, rules).reason == scaling.STEADY


def test_scale_from_zero_respects_the_step_limit_and_max() -> None:
    rules = replace(RULES, min_workers=0, max_step_up=2)
    assert decide(observed(500, desired=0), rules=rules).target == 2
    assert decide(observed(500, desired=0), rules=replace(rules, max_workers=0)).reason == scaling.AT_MAX


def test_scale_to_zero_after_the_window() -> None:
    rules = replace(RULES, min_workers=0)
    assert run_cycles([3] + [0] * 10, rules=rules, every=timedelta(minutes=1)) == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_missing_prefect_data_never_changes_anything() -> None:
    memory = replace(CALM, last_scale_down=NOW - timedelta(hours=1))
    for desired in (None, 0, 1, 7, 10, 50):
        d = decide(observed(prefect=False, desired=desired), memory)
        assert (d.target, d.reason, d.recommendation) == (None, scaling.HOLDING, None)
        assert d.memory == memory and d.memory_unapplied == memory
        assert scaling_condition(d).status == "Unknown"
        assert "Prefect" in d.message


def test_unknown_ecs_count_holds() -> None:
    d = decide(observed(500, desired=None))
    assert (d.target, d.reason) == (None, scaling.HOLDING)
    assert d.memory == CALM
    assert "ECS" in d.message


@pytest.mark.parametrize(
    ("flags", "words"),
    [({"autoscaling_target": True}, "Application Auto Scaling target"),
     ({"deployment_in_progress": True}, "deployment of the service is in progress")],
)
def test_conflict_hold_leaves_the_count_alone(flags: dict[str, bool], words: str) -> None:
    for current in (1, 3, 40):  # even outside the bounds: the other owner's bounds apply
        d = decide(observed(100, desired=current, **flags))
        assert (d.target, d.reason) == (None, scaling.CONFLICT)
        assert words in d.message and "onConflict is Hold" in d.message
        assert scaling_condition(d).status == "False"
        assert d.memory.history[-1] == (NOW, 10)  # demand is still recorded
        assert d.memory.last_scale_up is None


def test_conflict_override_acts_and_says_so() -> None:
    d = decide(observed(100, desired=3, autoscaling_target=True, deployment_in_progress=True),
               on_conflict=scaling.OVERRIDE)
    assert (d.target, d.reason) == (10, scaling.SCALED_UP)
    assert d.conflict == ("the service has an Application Auto Scaling target and "
                          "a deployment of the service is in progress")
    assert d.message.endswith(f"Overriding: {d.conflict}.")
    assert scaling_condition(d).status == "True"


def test_unknown_conflict_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="onConflict"):
        decide(observed(1), on_conflict="Ignore")


def test_cooldowns_are_per_direction() -> None:
    rules = replace(RULES, scale_up_cooldown=timedelta(minutes=2), scale_down_cooldown=timedelta(minutes=10))
    just_up = replace(CALM, last_scale_up=NOW - timedelta(minutes=1))
    held = decide(observed(30, desired=3), just_up, rules)
    assert (held.target, held.reason) == (None, scaling.COOLDOWN)
    assert "scale-up cooldown for 1m more (wants 6)" in held.message
    assert decide(observed(30, desired=3), just_up, rules, at=NOW + timedelta(minutes=1)).target == 6

    just_down = replace(CALM, last_scale_down=NOW - timedelta(minutes=1))
    assert decide(observed(0, desired=3), just_down, rules).reason == scaling.COOLDOWN
    assert decide(observed(0, desired=3), just_down, rules, at=NOW + timedelta(minutes=9)).target == 1
    # Demand rising right after a scale-down is served at once.
    assert decide(observed(30, desired=3), just_down, rules).target == 6


def test_a_change_not_applied_starts_no_cooldown() -> None:
    d = decide(observed(30, desired=3))
    assert d.memory.last_scale_up == NOW
    assert d.memory_unapplied.last_scale_up is None
    assert d.memory_unapplied.history == d.memory.history


@pytest.mark.parametrize(("current", "target"), [(0, 2), (1, 2), (7, 6), (40, 6)])
def test_outside_bounds_is_brought_inside_despite_steps_and_cooldowns(current: int, target: int) -> None:
    rules = replace(RULES, min_workers=2, max_workers=6, max_step_up=1, max_step_down=1,
                    scale_up_cooldown=timedelta(hours=1), scale_down_cooldown=timedelta(hours=1))
    memory = replace(CALM, last_scale_up=NOW, last_scale_down=NOW)
    d = decide(observed(0, desired=current), memory, rules)
    assert (d.target, d.reason) == (target, scaling.BOUNDS_ENFORCED)
    assert f"{current} was outside [2, 6]" in d.message


def test_outside_bounds_moves_toward_the_backlog_within_the_step_limit() -> None:
    rules = replace(RULES, min_workers=2, max_step_up=5)
    assert decide(observed(100, desired=0), rules=rules).target == 5


def test_lowered_max_wins_over_history() -> None:
    memory = ScalingMemory(history=((NOW - timedelta(minutes=1), 10),))
    d = decide(observed(0, desired=10), memory, replace(RULES, max_workers=4))
    assert (d.target, d.reason) == (4, scaling.BOUNDS_ENFORCED)


def test_invalid_rules_are_refused() -> None:
    for bad in ({"min_workers": 5, "max_workers": 4}, {"min_workers": -1}, {"backlog_per_worker": 0},
                {"max_step_up": 0}, {"max_step_down": 0}, {"scale_up_cooldown": timedelta(seconds=-1)}):
        with pytest.raises(ValueError):
            replace(RULES, **bad)


@pytest.mark.parametrize(
    ("decision", "status", "reason"),
    [
        (lambda: decide(observed(30, desired=2)), "True", "ScaledUp"),
        (lambda: decide(observed(0, desired=4)), "True", "ScaledDown"),
        (lambda: decide(observed(1, desired=0), rules=replace(RULES, min_workers=0)), "True", "ScaledFromZero"),
        (lambda: decide(observed(0, desired=20)), "True", "BoundsEnforced"),
        (lambda: decide(observed(12, desired=3)), "True", "Steady"),
        (lambda: decide(observed(99, desired=10)), "True", "AtMax"),
        (lambda: decide(observed(0, desired=1)), "True", "AtMin"),
        (lambda: decide(observed(0, desired=4), ScalingMemory()), "True", "Stabilizing"),
        (lambda: decide(observed(30, desired=2), replace(CALM, last_scale_up=NOW),
                        replace(RULES, scale_up_cooldown=timedelta(minutes=1))), "True", "Cooldown"),
        (lambda: decide(observed(prefect=False)), "Unknown", "Holding"),
        (lambda: decide(observed(30, desired=None)), "Unknown", "Holding"),
        (lambda: decide(observed(30, autoscaling_target=True)), "False", "Conflict"),
    ],
)
def test_condition(decision, status: str, reason: str) -> None:
    d = decision()
    c = scaling_condition(d)
    assert (c.type, c.status, c.reason) == ("Scaling", status, reason)
    assert c.message == d.message


def test_message_tells_the_story() -> None:
    d = decide(observed(23, 4, desired=2, online=2), rules=replace(RULES, include_pending=True))
    assert d.message == ("desiredCount 2 -> 6. Backlog 23 late + 4 pending at 5 per worker wants 6 worker(s); "
                         "2 online, ECS 2 running, 0 pending.")


def test_runs_due_soon_count_in_the_backlog() -> None:
    rules = replace(RULES, min_workers=0)
    soon = ScalingObservation(Backlog(late=0, pending=0, workers_online=0, upcoming=6), ServiceCounts(0))
    d = decide(soon, rules=rules)
    assert (d.target, d.reason) == (2, scaling.SCALED_FROM_ZERO)
    assert "0 late + 6 due soon" in d.message
    nothing = ScalingObservation(Backlog(late=0, pending=0, workers_online=0), ServiceCounts(0))
    assert decide(nothing, rules=rules).target is None
