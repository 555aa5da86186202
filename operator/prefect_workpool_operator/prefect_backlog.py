"""The Prefect reads scaling adds to a cycle: runs due soon (lookahead) and the backlog per queue.

- Lookahead alone: one ``/flow_runs/count`` of SCHEDULED runs due within it.
- Per queue (metrics, or scaling on named queues): one ``/flow_runs/filter`` page of
  the backlog's runs (≤ 200), grouped by queue; it also yields the lookahead figure.
  A backlog past ``MAX_PAGES`` pages is counted per queue instead (one count per queue),
  so the cost stays bounded whatever the backlog.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from .core.queue_backlog import BacklogReading, BacklogRun, QueueCounts, group_by_queue
from .prefect_api import PrefectClient, pool_scope

PAGE = 200  # the server's maximum per flow_runs/filter
MAX_PAGES = 3


def _when(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


async def count_upcoming(client: PrefectClient, pool: str, queues: list[str], now: datetime,
                         lookahead: timedelta) -> int:
    """SCHEDULED runs with now < expected start <= now + lookahead (one request)."""
    return await client.count_runs({**pool_scope(pool, queues), "flow_runs": {
        "state": {"type": {"any_": ["SCHEDULED"]}},
        "expected_start_time": {"after_": (now + timedelta(microseconds=1)).isoformat(),
                                "before_": (now + lookahead).isoformat()}}})


async def read_queue_backlogs(client: PrefectClient, pool: str, queues: list[str], now: datetime,
                              lookahead: timedelta, include_pending: bool,
                              known: set[str]) -> dict[str, QueueCounts]:
    """The backlog's runs grouped by queue; ``known`` queues are listed even at 0."""
    types = ["SCHEDULED", "PENDING"] if include_pending else ["SCHEDULED"]
    flow_runs = {"state": {"type": {"any_": types}}, "expected_start_time": {"before_": (now + lookahead).isoformat()}}
    body = {**pool_scope(pool, queues), "flow_runs": flow_runs, "sort": "EXPECTED_START_TIME_ASC", "limit": PAGE}
    runs: list[BacklogRun] = []
    for page in range(MAX_PAGES):
        batch = await client.filter_runs({**body, "offset": page * PAGE})
        runs += [BacklogRun(r.get("work_queue_name"), str((r.get("state") or {}).get("type") or r.get("state_type")),
                            _when(r.get("expected_start_time"))) for r in batch]
        if len(batch) < PAGE:
            return group_by_queue(runs, now, known)
    # A backlog this large: exact counts per queue seen, rather than more pages.
    names = sorted(set(known) | {r.queue for r in runs if r.queue})
    return dict(zip(names, await asyncio.gather(*(
        _count_queue(client, pool, name, now, lookahead, include_pending) for name in names))))


async def _count_queue(client: PrefectClient, pool: str, queue: str, now: datetime, lookahead: timedelta,
                       include_pending: bool) -> QueueCounts:
    scope = pool_scope(pool, [queue])
    due = {"state": {"type": {"any_": ["SCHEDULED"]}}}
    late = await client.count_runs({**scope, "flow_runs": {**due, "expected_start_time": {"before_": now.isoformat()}}})
    upcoming = await count_upcoming(client, pool, [queue], now, lookahead) if lookahead else 0
    pending = await client.count_runs({**scope, "flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}}) \
        if include_pending else 0
    return QueueCounts(late, upcoming, pending)


async def read_backlog(client: PrefectClient, pool: str, queues: list[str], now: datetime, *, lookahead: timedelta,
                       include_pending: bool, per_queue: bool, known: set[str]) -> BacklogReading:
    """What scaling needs beyond the pool observation, in as few reads as it allows."""
    if per_queue:
        grouped = await read_queue_backlogs(client, pool, queues, now, lookahead, include_pending, known)
        return BacklogReading(sum(c.upcoming for c in grouped.values()), grouped)
    if lookahead > timedelta(0):
        return BacklogReading(await count_upcoming(client, pool, queues, now, lookahead), None)
    return BacklogReading(0, None)
