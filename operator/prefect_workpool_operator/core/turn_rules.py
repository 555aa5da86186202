"""Who gets a turn to run a cycle: warm cycles first, and cold ones never hold every turn.

A *cold* cycle is a policy's first in this process: its reads are not cached yet (the
pool, its workers and runs in full, the Secret, the AWS client), it writes the first
status and one Event per condition — about 2 s at 1,000 new policies, against 0.06 s
for a *warm* one. Measured (bench/fleet.py, 1,000 policies applied at once): with every
turn held by cold cycles, policies whose first cycle was done waited up to 20 s for a turn
at their next start, so their gaps grew past interval + 5 s. So cold cycles never hold the
last ``reserved(limit)`` turns, and a freed turn goes to a waiting warm cycle first.
"""

from __future__ import annotations

from typing import Literal

WARM_SHARE = 4  # one turn in this many (at least one) is kept for warm cycles


def reserved(limit: int) -> int:
    """Turns only warm cycles may hold (none when there is a single turn)."""
    return max(1, limit // WARM_SHARE) if limit >= 2 else 0


def admits(in_flight: int, cold_in_flight: int, limit: int, *, cold: bool) -> bool:
    """Whether a cycle of that kind may start now, with ``in_flight`` cycles running
    (``cold_in_flight`` of them cold) out of ``limit`` turns."""
    if in_flight >= limit:
        return False
    return not cold or cold_in_flight < limit - reserved(limit)


def next_up(
    in_flight: int, cold_in_flight: int, limit: int, *, warm_waiting: bool, cold_waiting: bool
) -> Literal["warm", "cold"] | None:
    """Which waiting kind gets a turn now: a warm cycle when one waits and may start,
    else a cold one when it may; None when neither (all turns held, or only cold ones
    wait and the cold share is full)."""
    if warm_waiting and admits(in_flight, cold_in_flight, limit, cold=False):
        return "warm"
    if cold_waiting and admits(in_flight, cold_in_flight, limit, cold=True):
        return "cold"
    return None
