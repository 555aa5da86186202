"""Turns for cycles in flight, all policies together, scheduled cycles first.

A fleet applied at once queues its first cycles (full Prefect reads, first status write,
first Events) for turns. Served in arrival order, a policy whose next cycle falls due
meanwhile waits behind that whole burst and misses its interval; so a scheduled cycle
takes the next free turn ahead of every waiting first cycle. First cycles still run as
soon as no scheduled cycle waits (the steady load of a fleet takes a few turns at most).
"""

from __future__ import annotations

import asyncio
from collections import deque


class Turns:
    """A semaphore of ``limit`` turns with two queues: scheduled cycles, then first cycles."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._scheduled: deque[asyncio.Future[None]] = deque()
        self._first: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._free <= 0 or bool(self._scheduled or self._first)

    async def take(self, *, scheduled: bool) -> None:
        if not self.locked():
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._scheduled if scheduled else self._first
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a turn just as it was cancelled: pass it on
            else:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in (self._scheduled, self._first):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
