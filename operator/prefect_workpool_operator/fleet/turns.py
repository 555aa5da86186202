"""Turns for cycles in flight (one set per Prefect server, fleet/keyed_turns.py): warm cycles first (core.turn_rules).

A fleet applied at once (or an operator restart) queues its cold first cycles (full
Prefect reads, first status write, first Events) for turns. If they held every turn, a
policy whose first cycle was done would wait behind that whole burst at its next start
and miss its interval; so cold cycles never hold the last few turns, and a freed turn
goes to a waiting warm cycle ahead of every waiting cold one. Within a kind, first come,
first served.
"""

from __future__ import annotations

import asyncio
from collections import deque

from prefect_workpool_operator.core import turn_rules


class Turns:
    """A semaphore of ``limit`` turns with two queues: warm cycles, then cold ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.cold_in_flight = 0
        self._waiting: dict[bool, deque[asyncio.Future[None]]] = {False: deque(), True: deque()}  # by cold

    def locked(self, *, cold: bool) -> bool:
        """Whether a cycle of that kind would wait (turns full, or others of its kind or warm ones waiting)."""
        if self._waiting[False] or self._waiting[cold]:
            return True
        return not turn_rules.admits(self.in_flight, self.cold_in_flight, self.limit, cold=cold)

    async def take(self, *, cold: bool) -> None:
        if not self.locked(cold=cold):
            self._hold(cold)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting[cold]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(cold=cold)  # handed a turn just as it was cancelled: pass it on
            else:
                if waiter in queue:  # else already dropped by a hand-over
                    queue.remove(waiter)
                self._hand_over()  # a warm waiter gone may let a cold one start
            raise

    def release(self, *, cold: bool) -> None:
        self.in_flight -= 1
        self.cold_in_flight -= cold
        self._hand_over()

    def _hold(self, cold: bool) -> None:
        self.in_flight += 1
        self.cold_in_flight += cold

    def _hand_over(self) -> None:
        while True:
            for queue in self._waiting.values():
                while queue and queue[0].done():  # cancelled: its task removes it too
                    queue.popleft()
            kind = turn_rules.next_up(self.in_flight, self.cold_in_flight, self.limit,
                                      warm_waiting=bool(self._waiting[False]), cold_waiting=bool(self._waiting[True]))
            if kind is None:
                return
            cold = kind == "cold"
            self._hold(cold)
            self._waiting[cold].popleft().set_result(None)
