"""Turns for cycles in flight (fleet/turns.py): warm cycles ahead of cold first ones."""

from __future__ import annotations

import asyncio

from prefect_workpool_operator.core import turn_rules
from prefect_workpool_operator.fleet.turns import Turns


async def test_a_free_turn_is_taken_at_once_and_the_limit_holds() -> None:
    turns = Turns(2)
    await turns.take(cold=False)
    await turns.take(cold=False)
    assert turns.locked(cold=False)
    waiting = asyncio.ensure_future(turns.take(cold=False))
    await asyncio.sleep(0)
    assert not waiting.done()
    turns.release(cold=False)
    await waiting
    assert turns.locked(cold=False)
    assert turns.in_flight == 2


async def test_cold_cycles_never_hold_the_reserved_turns() -> None:
    turns = Turns(8)
    for _ in range(8 - turn_rules.reserved(8)):
        await turns.take(cold=True)
    assert turns.locked(cold=True)
    assert not turns.locked(cold=False)
    waiting = asyncio.ensure_future(turns.take(cold=True))
    await asyncio.sleep(0)
    assert not waiting.done()
    await turns.take(cold=False)  # a warm cycle starts at once beside them
    turns.release(cold=True)
    await waiting
    assert (turns.in_flight, turns.cold_in_flight) == (8 - turn_rules.reserved(8) + 1, 8 - turn_rules.reserved(8))


async def test_a_warm_cycle_goes_ahead_of_every_waiting_cold_cycle() -> None:
    turns = Turns(1)
    await turns.take(cold=True)
    order: list[str] = []

    async def cycle(name: str, cold: bool) -> None:
        await turns.take(cold=cold)
        order.append(name)
        turns.release(cold=cold)

    tasks = [asyncio.ensure_future(cycle(f"cold-{i}", True)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(cycle("warm", False)))
    await asyncio.sleep(0)
    turns.release(cold=True)
    await asyncio.gather(*tasks)
    assert order == ["warm", "cold-0", "cold-1", "cold-2"]
    assert not turns.locked(cold=True)
    assert (turns.in_flight, turns.cold_in_flight) == (0, 0)


async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_turn() -> None:
    turns = Turns(1)
    await turns.take(cold=False)
    gone = asyncio.ensure_future(turns.take(cold=True))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    turns.release(cold=False)
    assert not turns.locked(cold=True)
    # Handed the turn and cancelled before it ran: the turn is passed on, not lost.
    await turns.take(cold=False)
    handed = asyncio.ensure_future(turns.take(cold=True))
    await asyncio.sleep(0)
    turns.release(cold=False)
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    assert not turns.locked(cold=True)
    assert (turns.in_flight, turns.cold_in_flight) == (0, 0)


async def test_a_warm_waiter_cancelled_lets_a_cold_one_start() -> None:
    turns = Turns(2)
    await turns.take(cold=False)
    await turns.take(cold=False)
    warm = asyncio.ensure_future(turns.take(cold=False))
    cold = asyncio.ensure_future(turns.take(cold=True))
    await asyncio.sleep(0)
    warm.cancel()
    await asyncio.gather(warm, return_exceptions=True)
    turns.release(cold=False)
    await cold
    assert (turns.in_flight, turns.cold_in_flight) == (2, 1)
