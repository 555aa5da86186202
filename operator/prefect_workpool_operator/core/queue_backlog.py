"""The backlog per work queue, and the CloudWatch series it becomes, on plain data.

Prefect has no count grouped by queue, so the adapter lists the backlog's runs (one
page of 200 in the usual case) and this module groups them. Runs are classified
the way the pool's counts are: PENDING; SCHEDULED already due (late); SCHEDULED due
within the lookahead (upcoming).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from prefect_workpool_operator.core.scaling import Backlog, backlog_size

POOL_DIMENSION = "WorkPool"
QUEUE_DIMENSION = "WorkQueue"


@dataclass(frozen=True)
class QueueCounts:
    late: int = 0
    upcoming: int = 0
    pending: int = 0

    def plus(self, other: QueueCounts) -> QueueCounts:
        return QueueCounts(self.late + other.late, self.upcoming + other.upcoming, self.pending + other.pending)


@dataclass(frozen=True)
class BacklogReading:
    """What scaling reads from Prefect beyond the pool's counts."""

    upcoming: int  # SCHEDULED runs due within the lookahead, in the observed scope
    queues: Mapping[str, QueueCounts] | None  # None: not read this cycle


@dataclass(frozen=True)
class BacklogRun:
    """The three fields of a listed run that grouping needs."""

    queue: str | None
    state_type: str
    expected_start: datetime | None


def group_by_queue(runs: Iterable[BacklogRun], now: datetime, known: Iterable[str] = ()) -> dict[str, QueueCounts]:
    """Counts per queue; ``known`` queues appear with zeros (a drained queue still reports 0)."""
    counts: dict[str, QueueCounts] = {name: QueueCounts() for name in known}
    for run in runs:
        if run.queue is None:
            continue  # a run outside any queue is in the pool's figure only
        if run.state_type == "PENDING":
            one = QueueCounts(pending=1)
        elif run.state_type == "SCHEDULED":
            due = run.expected_start is None or run.expected_start <= now
            one = QueueCounts(late=1) if due else QueueCounts(upcoming=1)
        else:
            continue
        counts[run.queue] = counts.get(run.queue, QueueCounts()).plus(one)
    return counts


@dataclass(frozen=True)
class QueueListing:
    """The backlog's runs as one read listed them: every one expected to start before ``until``
    (listed beyond the lookahead, so the window can move with the clock without a read)."""

    runs: tuple[BacklogRun, ...]
    until: datetime

    def grouped(self, now: datetime, lookahead: timedelta, known: set[str]) -> dict[str, QueueCounts] | None:
        """Counts per queue at ``now``; None once the window ends past what was listed."""
        end = now + lookahead
        if end >= self.until:
            return None
        return group_by_queue([r for r in self.runs if r.expected_start is None or r.expected_start <= end], now, known)


def scoped_backlog(per_queue: Mapping[str, QueueCounts], queues: Iterable[str], workers_online: int) -> Backlog:
    """The backlog of the named queues only (a named queue without runs counts 0)."""
    total = QueueCounts()
    for name in queues:
        total = total.plus(per_queue.get(name, QueueCounts()))
    return Backlog(late=total.late, pending=total.pending, workers_online=workers_online, upcoming=total.upcoming)


def queue_sizes(per_queue: Mapping[str, QueueCounts], include_pending: bool) -> dict[str, int]:
    return {name: backlog_size(Backlog(c.late, c.pending, 0, c.upcoming), include_pending)
            for name, c in sorted(per_queue.items())}


@dataclass(frozen=True)
class Series:
    """One CloudWatch series and this cycle's value."""

    dimensions: tuple[tuple[str, str], ...]
    value: int


def backlog_series(pool: str, pool_backlog: int, queues: Mapping[str, int] | None) -> list[Series]:
    """The pool's series first, then one per queue (dimensions WorkPool + WorkQueue)."""
    series = [Series(((POOL_DIMENSION, pool),), pool_backlog)]
    for name, value in sorted((queues or {}).items()):
        series.append(Series(((POOL_DIMENSION, pool), (QUEUE_DIMENSION, name)), value))
    return series
