"""When cycles start (core.schedule) and what of the status is written (core.report)."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_workpool_operator.core import report, schedule

intervals = st.floats(min_value=10, max_value=86_400, allow_nan=False)
moments = st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False)


@given(key=st.text(min_size=1, max_size=40), interval=intervals)
def test_the_phase_is_stable_and_inside_the_interval(key: str, interval: float) -> None:
    offset = schedule.phase(key, interval)
    assert 0 <= offset < interval
    assert schedule.phase(key, interval) == offset


@given(now=moments, interval=intervals, offset_fraction=st.floats(min_value=0, max_value=0.999))
def test_the_next_start_is_on_the_phase_and_within_one_interval(now: float, interval: float, offset_fraction: float) -> None:
    offset = offset_fraction * interval
    start = schedule.next_start(now, interval, offset)
    assert now < start <= now + interval + schedule.SLOT_TOLERANCE
    slots = (start - offset) / interval
    assert abs(slots - round(slots)) < 1e-6


@given(first=moments, interval=intervals, lateness=st.floats(0, 5))
def test_consecutive_starts_are_one_interval_apart_whatever_the_cycle_took(
    first: float, interval: float, lateness: float
) -> None:
    """The 30 s interval that became 35 s: the next start counts from the slot, not the cycle's end."""
    offset = schedule.phase("policy", interval)
    start = schedule.next_start(first, interval, offset)
    # The cycle starts a little late (timer wake-up), runs, and the next start is computed then.
    actual = start + lateness
    following = schedule.next_start(actual, interval, offset)
    assert following - start == pytest.approx(interval, rel=1e-9, abs=1e-6)


@given(now=moments, interval=intervals, overrun=st.integers(min_value=1, max_value=5))
def test_an_overrun_skips_missed_starts_instead_of_bunching_them(now: float, interval: float, overrun: int) -> None:
    offset = schedule.phase("p", interval)
    start = schedule.next_start(now, interval, offset)
    ended = start + overrun * interval + 0.5
    assert ended < schedule.next_start(ended, interval, offset) <= ended + interval


def test_many_policies_spread_evenly_over_the_interval() -> None:
    interval, n = 30.0, 1000
    per_second = [0] * 30
    for i in range(n):
        per_second[int(schedule.phase(f"uid-{i}", interval))] += 1
    average = n / 30
    assert max(per_second) <= 2 * average  # the fleet target is ≤ 3×; a hash does much better
    assert statistics.pstdev(per_second) < 0.5 * average


@given(now=moments, due_in=st.floats(min_value=-100, max_value=100), tick=st.floats(min_value=0.1, max_value=10))
def test_a_timer_sleeps_to_a_start_within_one_tick_and_skips_later_ones(now: float, due_in: float, tick: float) -> None:
    due = now + due_in
    wait = schedule.wait_before_start(now, due, tick)
    if due - now > tick:
        assert wait is None
    else:
        assert wait is not None and 0 <= wait <= tick and wait == max(due - now, 0.0)


NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
STATUS = {
    "observedGeneration": 3,
    "conditions": [{"type": "Ready", "status": "True", "reason": "Healthy", "message": "ok",
                    "lastTransitionTime": "2026-11-30T10:00:00Z", "observedGeneration": 3}],
    "runs": {"late": 0, "pending": 1, "running": 2},
    "lastReconcileTime": "2026-11-30T11:59:00Z",
}


def test_nothing_is_written_when_nothing_a_user_sees_changed() -> None:
    wanted = {**STATUS, "lastReconcileTime": "2026-11-30T12:00:00Z", "staleRuns": None}
    assert report.status_changes(STATUS, wanted, NOW, heartbeat_seconds=300) == {}


def test_a_changed_figure_is_written_with_the_heartbeat() -> None:
    wanted = {**STATUS, "runs": {"late": 1, "pending": 1, "running": 2}, "lastReconcileTime": "2026-11-30T12:00:00Z"}
    assert report.status_changes(STATUS, wanted, NOW, heartbeat_seconds=300) == {
        "runs": {"late": 1, "pending": 1, "running": 2}, "lastReconcileTime": "2026-11-30T12:00:00Z",
    }


def test_the_heartbeat_alone_is_refreshed_once_it_is_old() -> None:
    wanted = {**STATUS, "lastReconcileTime": "2026-11-30T12:00:00Z"}
    later = NOW + timedelta(minutes=5)
    assert report.status_changes(STATUS, wanted, later, heartbeat_seconds=300) == {
        "lastReconcileTime": "2026-11-30T12:00:00Z"
    }


def test_a_first_status_is_written_whole() -> None:
    wanted = {**STATUS, "lastReconcileTime": "2026-11-30T12:00:00Z"}
    assert report.status_changes(None, wanted, NOW, heartbeat_seconds=300) == wanted


@given(figure=st.integers(0, 5), previous=st.integers(0, 5))
def test_writing_is_idempotent(figure: int, previous: int) -> None:
    """Applying the changes once leaves nothing to write for the same outcome."""
    current = {**STATUS, "runs": {"late": previous}}
    wanted = {**STATUS, "runs": {"late": figure}, "lastReconcileTime": "2026-11-30T12:00:00Z"}
    applied = {**current, **report.status_changes(current, wanted, NOW, heartbeat_seconds=300)}
    assert report.status_changes(applied, wanted, NOW, heartbeat_seconds=300) == {}


@given(first=moments, interval=intervals, lateness_fraction=st.floats(0, 3))
def test_a_late_start_keeps_the_grid_and_never_runs_twice_in_a_row(
    first: float, interval: float, lateness_fraction: float
) -> None:
    """A cycle that waited for its turn: the next start is a slot of the same grid, never
    closer than half an interval, and no later than that plus one interval."""
    offset = schedule.phase("policy", interval)
    due = schedule.next_start(first, interval, offset)
    actual = due + lateness_fraction * interval
    following = schedule.start_after_cycle(actual, interval, offset, first=False)
    slots = (following - offset) / interval
    assert abs(slots - round(slots)) < 1e-6
    assert actual + interval / 2 < following <= actual + 1.5 * interval + schedule.SLOT_TOLERANCE
    if lateness_fraction == 0:  # on time: exactly one interval
        assert following - due == pytest.approx(interval, rel=1e-9, abs=1e-6)


@given(now=moments, interval=intervals, lateness_fraction=st.floats(0, 3))
def test_a_policys_second_cycle_comes_within_one_interval_and_the_first_cycle_gap(
    now: float, interval: float, lateness_fraction: float
) -> None:
    """After a policy's first cycle in this process — run at once (a new policy) or at its
    phase after a restart, on time or late (it waited for a turn) — the second is on the
    grid and within one interval and FIRST_CYCLE_GAP (not up to 1.5 intervals)."""
    offset = schedule.phase("new", interval)
    started = now + lateness_fraction * interval
    following = schedule.start_after_cycle(started, interval, offset, first=True)
    gap = min(interval / 2, schedule.FIRST_CYCLE_GAP)
    assert started + gap < following <= started + gap + interval + schedule.SLOT_TOLERANCE
    slots = (following - offset) / interval
    assert abs(slots - round(slots)) < 1e-6


@given(first=st.floats(0.01, 1), total=st.floats(0, 30))
def test_the_finalizer_waits_double_and_stay_within_their_total(first: float, total: float) -> None:
    waits = schedule.finalizer_waits(first, total)
    assert sum(waits) <= total + 1e-9
    assert all(b == 2 * a for a, b in zip(waits, waits[1:]))
    assert (waits[:1] == [first]) == (first <= total)
    assert sum(waits) + first * 2 ** len(waits) > total  # no room for one more
