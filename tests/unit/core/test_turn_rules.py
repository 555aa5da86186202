"""Who gets a turn (core.turn_rules): warm cycles first, cold ones never hold every turn.

Property tests on plain data: a random run of arrivals and ends, with the rules deciding
every start, keeps the limits, leaves no turn idle while an admissible cycle waits, and
never makes a warm cycle wait while fewer than the reserved turns are held by warm ones.
"""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from prefect_workpool_operator.core import turn_rules

limits = st.integers(1, 40)


@given(limit=limits)
def test_cold_cycles_always_have_a_turn_and_warm_ones_keep_some_once_there_are_two(limit: int) -> None:
    reserved = turn_rules.reserved(limit)
    assert 0 <= reserved < limit  # a cold cycle can always run eventually
    assert (reserved >= 1) == (limit >= 2)
    assert turn_rules.admits(0, 0, limit, cold=True)
    assert not turn_rules.admits(limit - reserved, limit - reserved, limit, cold=True) or reserved == 0
    assert turn_rules.admits(limit - 1, limit - reserved, limit, cold=False)


steps = st.lists(st.tuples(st.sampled_from(["warm", "cold", "end"]), st.integers(0, 10**6)), max_size=300)


@given(limit=limits, steps=steps)
def test_a_run_of_arrivals_and_ends_keeps_the_limits_and_wastes_no_turn(limit: int, steps: list[tuple[str, int]]) -> None:
    running: list[str] = []
    waiting: dict[str, deque[int]] = {"warm": deque(), "cold": deque()}
    started: list[str] = []

    def hand_over() -> None:
        while (kind := turn_rules.next_up(len(running), running.count("cold"), limit,
                                          warm_waiting=bool(waiting["warm"]),
                                          cold_waiting=bool(waiting["cold"]))) is not None:
            waiting[kind].popleft()
            running.append(kind)
            started.append(kind)

    for i, (what, pick) in enumerate(steps):
        if what == "end":
            if running:
                running.pop(pick % len(running))
        else:
            waiting[what].append(i)
        hand_over()
        cold = running.count("cold")
        assert len(running) <= limit
        assert cold <= limit - turn_rules.reserved(limit)
        # No idle turn while an admissible cycle waits.
        if waiting["warm"]:
            assert len(running) == limit
        if waiting["cold"]:
            assert len(running) == limit or cold == limit - turn_rules.reserved(limit)
    assert started.count("cold") + len(waiting["cold"]) == sum(1 for what, _ in steps if what == "cold")


@given(limit=st.integers(2, 40), held=st.integers(0, 40))
def test_cold_cycles_alone_leave_the_reserved_turns_to_warm_ones(limit: int, held: int) -> None:
    """However many cold cycles wait, the reserved turns stay free for a warm cycle."""
    cold = 0
    while turn_rules.next_up(cold, cold, limit, warm_waiting=False, cold_waiting=True) == "cold" and cold < held + limit:
        cold += 1
    assert cold == limit - turn_rules.reserved(limit)
    assert turn_rules.next_up(cold, cold, limit, warm_waiting=True, cold_waiting=True) == "warm"
