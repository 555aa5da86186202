"""When a policy's cycles start: on a fixed phase of its interval, on the wall clock.

A policy's cycles start at ``phase + k * interval`` (epoch seconds), with the phase a
stable hash of the policy's uid. So the gap between two cycle starts is the interval
itself (not the interval plus the cycle plus the timer's lateness), and many policies'
cycles spread evenly over the interval instead of staying in step with the moment
they were created or the operator started.
"""

from __future__ import annotations

import hashlib
import math


def phase(key: str, interval: float) -> float:
    """A stable offset in ``[0, interval)`` for ``key`` (a policy uid), uniform over keys."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (digest / 2**64) * interval


SLOT_TOLERANCE = 1e-3  # seconds: a start this close to ``after`` is the one just run


def next_start(after: float, interval: float, offset: float) -> float:
    """The first start after ``after``: the smallest ``offset + k * interval`` more than
    ``SLOT_TOLERANCE`` later (so float rounding at a slot never yields the same slot twice)."""
    if interval <= 0:
        raise ValueError("interval must be positive")
    k = math.floor((after - offset) / interval)
    start = offset + k * interval
    while start <= after + SLOT_TOLERANCE:
        start = offset + (k := k + 1) * interval
    return start


FIRST_CYCLE_GAP = 5.0  # seconds: a policy's second cycle is at most one interval and this later


def start_after_cycle(started: float, interval: float, offset: float, *, first: bool) -> float:
    """The start that follows a cycle begun at ``started``: the next slot of the phase grid,
    so a late start does not shift the ones after it — but never closer to this start than
    half an interval (a cycle that started late skips the slot right behind it rather than
    run twice in a row) or, after a policy's first cycle in this process (``first``: a new
    policy, or any policy after a restart, whether it waited for its phase or not), than
    ``FIRST_CYCLE_GAP`` (its second cycle stays within one interval and that gap)."""
    gap = min(interval / 2, FIRST_CYCLE_GAP) if first else interval / 2
    return next_start(started + gap, interval, offset)


def finalizer_waits(first: float = 0.05, total: float = 5.0) -> list[float]:
    """Sleeps between looks for kopf's finalizer on a new policy before its first write:
    doubling from ``first`` (it is usually there within one), together at most ``total``
    (then the policy goes on: a late finalizer only costs kopf a second patch)."""
    waits: list[float] = []
    wait = first
    while sum(waits) + wait <= total:
        waits.append(wait)
        wait *= 2
    return waits


def wait_before_start(now: float, due: float, tick: float) -> float | None:
    """How long a timer waking at ``now`` sleeps before starting the cycle due at ``due``;
    None when the start is more than one ``tick`` away (a later wake will take it)."""
    wait = due - now
    if wait > tick:
        return None
    return max(wait, 0.0)
