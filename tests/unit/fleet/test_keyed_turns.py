"""Cycle turns per Prefect server (fleet/keyed_turns.py, core/turn_order.py): a slow server's
cycles hold only their own turns; the total bound never starves a server with none in flight."""

from __future__ import annotations

import asyncio

from hypothesis import given, strategies as st

from prefect_workpool_operator.core.turn_order import Waiter, may_start, next_turn
from prefect_workpool_operator.fleet.keyed_turns import KeyedTurns, cycle_key

KEYS = st.sampled_from(["slow", "healthy", "cloud-a", "cloud-b"])
OPS = st.lists(st.one_of(st.tuples(st.just("arrive"), KEYS, st.booleans()),
                         st.tuples(st.just("release"), st.integers(0, 1000), st.just(False))), max_size=80)


@given(OPS, st.integers(1, 6))
def test_the_total_bound_holds_but_never_stops_a_server_with_nothing_in_flight(ops: list, limit: int) -> None:
    in_flight: dict[str, int] = {}
    held: list[str] = []
    waiting: list[Waiter] = []
    for number, (op, arg, cold) in enumerate(ops):
        if op == "arrive":
            if may_start(arg, in_flight, limit):
                assert in_flight.get(arg, 0) == 0 or sum(in_flight.values()) < limit
                in_flight[arg] = in_flight.get(arg, 0) + 1
                held.append(arg)
            else:
                waiting.append(Waiter(arg, cold, number))
        elif held:
            key = held.pop(arg % len(held))
            in_flight[key] -= 1
            if not in_flight[key]:
                del in_flight[key]
            while (index := next_turn(waiting, in_flight, limit)) is not None:
                chosen = waiting.pop(index)
                # The key with the fewest in flight, then warm first, then in arrival order.
                for other in waiting:
                    if may_start(other.key, in_flight, limit):
                        assert (in_flight.get(chosen.key, 0), chosen.cold, chosen.arrival) < \
                            (in_flight.get(other.key, 0), other.cold, other.arrival)
                in_flight[chosen.key] = in_flight.get(chosen.key, 0) + 1
                held.append(chosen.key)
        # Over the total only by one reserved turn per key in flight; nobody left waiting who may start.
        assert sum(in_flight.values()) <= limit - 1 + len(in_flight) or not in_flight
        assert all(in_flight.get(w.key, 0) > 0 and sum(in_flight.values()) >= limit for w in waiting)


WAITERS = st.lists(st.builds(Waiter, KEYS, st.booleans(), st.integers(0, 50)), max_size=8)
IN_FLIGHT = st.dictionaries(KEYS, st.integers(1, 5))


@given(WAITERS, IN_FLIGHT, st.integers(1, 12))
def test_next_turn_picks_the_fewest_in_flight_then_warm_then_earliest_among_those_that_may_start(
    waiters: list[Waiter], in_flight: dict[str, int], limit: int
) -> None:
    allowed = [w for w in waiters if may_start(w.key, in_flight, limit)]
    index = next_turn(waiters, in_flight, limit)
    if not allowed:
        assert index is None
        return
    assert index is not None and waiters[index] in allowed
    rank = lambda w: (in_flight.get(w.key, 0), w.cold, w.arrival)  # noqa: E731
    assert rank(waiters[index]) == min(rank(w) for w in allowed)


def test_next_turn_prefers_the_server_with_fewest_in_flight_over_arrival_order() -> None:
    waiting = [Waiter("slow", False, 0), Waiter("healthy", True, 1)]
    assert next_turn(waiting, {"slow": 5, "healthy": 1}, 7) == 1
    assert next_turn(waiting, {"slow": 1, "healthy": 1}, 3) == 0  # a tie: warm first
    assert next_turn(waiting, {"slow": 1, "healthy": 1}, 2) is None  # full, both have one in flight


async def _started(task: asyncio.Future[None]) -> bool:
    for _ in range(5):
        await asyncio.sleep(0)
    return task.done()


async def test_a_server_holding_all_its_turns_does_not_hold_back_another() -> None:
    turns = KeyedTurns(per_key=2, total=3)
    slow, healthy = turns.of("slow", cold=False), turns.of("healthy", cold=True)
    await slow.take()
    await slow.take()
    assert slow.locked() and not healthy.locked()
    queued = asyncio.ensure_future(slow.take())
    assert not await _started(queued)
    await healthy.take()  # at once: the slow server's waiters are not ahead of it
    # The total (3) is reached: one more healthy cycle waits, a third server still gets its one.
    assert healthy.locked()
    third = turns.of("third", cold=True)
    assert not third.locked()
    await third.take()
    assert turns.in_flight == {"slow": 2, "healthy": 1, "third": 1}
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)


async def test_a_freed_turn_goes_to_the_server_with_fewest_in_flight() -> None:
    turns = KeyedTurns(per_key=4, total=4)
    slow, healthy, healthy_cold = turns.of("slow", cold=False), turns.of("healthy", cold=False), turns.of("healthy", cold=True)
    for _ in range(3):
        await slow.take()
    await healthy.take()
    slow_waiter = asyncio.ensure_future(slow.take())
    assert not await _started(slow_waiter)
    healthy_waiter = asyncio.ensure_future(healthy_cold.take())
    assert not await _started(healthy_waiter)
    slow.release()  # slow 2, healthy 1 in flight: the later, cold healthy waiter goes first
    assert await _started(healthy_waiter) and not slow_waiter.done()
    healthy.release()
    assert await _started(slow_waiter)
    assert turns.in_flight == {"slow": 3, "healthy": 1}


async def test_within_a_server_warm_cycles_go_ahead_of_cold_first_cycles() -> None:
    turns = KeyedTurns(per_key=1, total=8)
    first = turns.of("server", cold=True)
    await first.take()
    order: list[str] = []

    async def cycle(name: str, cold: bool) -> None:
        view = turns.of("server", cold=cold)
        await view.take()
        order.append(name)
        view.release()

    tasks = [asyncio.ensure_future(cycle(f"first-{i}", True)) for i in range(2)]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(cycle("warm", False)))
    await asyncio.sleep(0)
    first.release()
    await asyncio.gather(*tasks)
    assert order == ["warm", "first-0", "first-1"]
    assert turns.in_flight == {} and not first.locked()


async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_turn() -> None:
    turns = KeyedTurns(per_key=2, total=2)
    a, b, a_cold = turns.of("a", cold=False), turns.of("b", cold=False), turns.of("a", cold=True)
    await a.take()
    await b.take()
    # Waiting on the total (its key has a turn free): cancelled, it leaves both as they were.
    gone = asyncio.ensure_future(a_cold.take())
    assert not await _started(gone)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert turns.in_flight == {"a": 1, "b": 1}
    # Handed the turn and cancelled before it ran: the turn is passed on, not kept.
    handed = asyncio.ensure_future(a_cold.take())
    assert not await _started(handed)
    b.release()
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    assert turns.in_flight == {"a": 1}
    a.release()
    assert turns.in_flight == {} and not a.locked() and not b.locked()
    for _ in range(2):  # every turn of the key is free again
        await a.take()
    assert a.locked()


def test_the_key_is_the_prefect_server_or_cloud_account() -> None:
    cloud = "https://api.prefect.cloud/api/accounts/a1/workspaces/"
    assert cycle_key({"prefect": {"apiUrl": cloud + "w1"}}) == cycle_key({"prefect": {"apiUrl": cloud + "w2"}})
    assert cycle_key({"prefect": {"apiUrl": cloud + "w1"}}) != cycle_key(
        {"prefect": {"apiUrl": "https://api.prefect.cloud/api/accounts/a2/workspaces/w1"}})
    assert cycle_key({"prefect": {"apiUrl": "http://prefect:4200/api"}}) == "http://prefect:4200"
    assert cycle_key({"prefect": {"apiUrl": 5}}) == cycle_key({}) == cycle_key(None) == ""
