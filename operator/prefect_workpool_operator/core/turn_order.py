"""Who gets a cycle turn when several Prefect servers share one operator (fleet/keyed_turns.py).

Turns are counted per key (a Prefect server or Cloud account, ``prefect_http.budget_key``)
and in total. The total bounds how much the event loop runs at once; it must not let slow
servers, whose cycles hold their turns up to observe's deadline, starve healthy ones. So:

- a key with no cycle in flight may always start one, even over the total (one turn per
  key is reserved: the total is exceeded by at most the number of keys in flight − 1);
- otherwise a cycle starts while the total is below its limit;
- a freed turn goes to the waiting key with the fewest cycles in flight (a slow server's
  waiters come after a healthy one's), then to a warm cycle before a cold one (a
  policy's first cycle in this process, ``core.turn_rules``), then in arrival order.

The per-key limit itself is ``turns.Turns`` (one per key, warm cycles first): a cycle
reaches these decisions only once it holds its key's turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiter:
    key: str
    cold: bool
    arrival: int  # increasing: earlier waiters have smaller numbers


def may_start(key: str, in_flight: Mapping[str, int], total_limit: int) -> bool:
    """Whether a cycle of ``key`` may take a turn now (given the turns held per key)."""
    return in_flight.get(key, 0) == 0 or sum(in_flight.values()) < total_limit


def next_turn(waiters: Sequence[Waiter], in_flight: Mapping[str, int], total_limit: int) -> int | None:
    """Index of the waiter that takes the turn now free, or None when none may start."""
    best: tuple[int, bool, int] | None = None
    chosen = None
    for index, waiter in enumerate(waiters):
        if not may_start(waiter.key, in_flight, total_limit):
            continue
        rank = (in_flight.get(waiter.key, 0), waiter.cold, waiter.arrival)
        if best is None or rank < best:
            best, chosen = rank, index
    return chosen
