"""Cycle turns per Prefect server or Cloud account, so a slow one cannot starve the others.

A cycle on a slow Prefect keeps its turn up to observe's deadline (≥ 60 s). With one
shared set of turns, a slow server's policies held every turn and the other servers'
cycles all started late. Here each key (``prefect_http.budget_key`` of the policy's
``apiUrl``) has its own ``turns.Turns`` of ``per_key`` turns (warm cycles first, cold
first cycles never holding every turn),
and a total bound across keys decided by ``core.turn_order`` (a key with nothing in
flight always gets a turn; freed turns go to the key with the fewest in flight).

``KeyedTurns.of(key, cold=...)`` is one cycle's view (``locked``/``take``/``release``):
the handler picks the policy's key and whether its cycle is cold.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any

from prefect_workpool_operator.core.turn_order import Waiter, may_start, next_turn
from prefect_workpool_operator.prefect.http import budget_key
from prefect_workpool_operator.fleet.turns import Turns


class KeyedTurns:
    def __init__(self, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("turn limits must be at least 1")
        self.per_key = per_key
        self.total = total
        self._keys: dict[str, Turns] = {}
        self.in_flight: dict[str, int] = {}  # turns held past both bounds, per key
        self._waiting: list[tuple[Waiter, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    def of(self, key: str, *, cold: bool) -> KeyTurns:
        turns = self._keys.get(key)
        if turns is None:
            turns = self._keys[key] = Turns(self.per_key)
        return KeyTurns(self, key, turns, cold)

    def _locked(self, key: str) -> bool:
        return not may_start(key, self.in_flight, self.total)

    async def _take(self, key: str, cold: bool) -> None:
        if not self._locked(key):
            self._hold(key)
            return
        waiter = Waiter(key, cold, next(self._arrivals))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((waiter, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(key)  # handed a turn just as it was cancelled: pass it on
            elif (waiter, future) in self._waiting:
                self._waiting.remove((waiter, future))
            raise

    def _hold(self, key: str) -> None:
        self.in_flight[key] = self.in_flight.get(key, 0) + 1

    def _release(self, key: str) -> None:
        left = self.in_flight[key] - 1
        if left:
            self.in_flight[key] = left
        else:
            del self.in_flight[key]
        self._waiting = [(w, f) for w, f in self._waiting if not f.done()]  # cancelled meanwhile
        while (index := next_turn([w for w, _ in self._waiting], self.in_flight, self.total)) is not None:
            waiter, future = self._waiting.pop(index)
            self._hold(waiter.key)
            future.set_result(None)


class KeyTurns:
    """One cycle's view of its key: the key's own turns first, then one of the shared total."""

    def __init__(self, shared: KeyedTurns, key: str, turns: Turns, cold: bool) -> None:
        self._shared = shared
        self.key = key
        self.cold = cold
        self._turns = turns

    def locked(self) -> bool:
        return self._turns.locked(cold=self.cold) or self._shared._locked(self.key)

    async def take(self) -> None:
        await self._turns.take(cold=self.cold)
        try:
            await self._shared._take(self.key, self.cold)
        except BaseException:
            self._turns.release(cold=self.cold)
            raise

    def release(self) -> None:
        self._shared._release(self.key)
        self._turns.release(cold=self.cold)


def cycle_key(spec: Mapping[str, Any] | None) -> str:
    """The turns key of a policy: its Prefect server or account (an unusable spec: "")."""
    prefect = (spec or {}).get("prefect")
    url = prefect.get("apiUrl") if isinstance(prefect, Mapping) else None
    return budget_key(url) if isinstance(url, str) and url else ""
