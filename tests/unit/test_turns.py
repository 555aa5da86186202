"""Turns for cycles in flight (turns.py): scheduled cycles ahead of first ones."""

from __future__ import annotations

import asyncio

from prefect_workpool_operator.turns import Turns


async def test_a_free_turn_is_taken_at_once_and_the_limit_holds() -> None:
    turns = Turns(2)
    await turns.take(scheduled=False)
    await turns.take(scheduled=True)
    assert turns.locked()
    waiting = asyncio.ensure_future(turns.take(scheduled=True))
    await asyncio.sleep(0)
    assert not waiting.done()
    turns.release()
    await waiting
    assert turns.locked()


async def test_a_scheduled_cycle_goes_ahead_of_every_waiting_first_cycle() -> None:
    turns = Turns(1)
    await turns.take(scheduled=False)
    order: list[str] = []

    async def cycle(name: str, scheduled: bool) -> None:
        await turns.take(scheduled=scheduled)
        order.append(name)
        turns.release()

    tasks = [asyncio.ensure_future(cycle(f"first-{i}", False)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(cycle("scheduled", True)))
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["scheduled", "first-0", "first-1", "first-2"]
    assert not turns.locked()


async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_turn() -> None:
    turns = Turns(1)
    await turns.take(scheduled=True)
    gone = asyncio.ensure_future(turns.take(scheduled=False))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    turns.release()
    assert not turns.locked()
    # Handed the turn and cancelled before it ran: the turn is passed on, not lost.
    await turns.take(scheduled=True)
    handed = asyncio.ensure_future(turns.take(scheduled=False))
    await asyncio.sleep(0)
    turns.release()
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    assert not turns.locked()
