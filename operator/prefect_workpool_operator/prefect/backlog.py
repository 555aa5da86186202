"""The Prefect reads scaling adds to a cycle: runs due soon (lookahead) and the backlog per queue.

- Lookahead alone: counted from the pool's cached list of SCHEDULED runs not yet due
  (``PrefectClient.upcoming``, read with the counts: no request of its own); one
  ``/flow_runs/count`` without the event stream.
- Per queue (metrics, or scaling on named queues): one ``/flow_runs/filter`` page of
  the backlog's runs (≤ 200), grouped by queue; it also yields the lookahead figure.
  With the event stream the listing reaches the lookahead plus the resync ahead and is
  regrouped by the clock each cycle while no run of the pool changed (the pool's counts
  version) and the window stays inside it. A backlog past ``MAX_PAGES`` pages is counted
  per queue instead (one count per queue, every cycle), so the cost stays bounded
  whatever the backlog.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from prefect_workpool_operator.core.queue_backlog import BacklogReading, BacklogRun, QueueCounts, QueueListing, group_by_queue
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.pools import pool_scope

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
                              known: set[str], horizon: timedelta = timedelta(0),
                              ) -> tuple[dict[str, QueueCounts], QueueListing | None]:
    """The backlog's runs grouped by queue; ``known`` queues are listed even at 0. Listed
    ``horizon`` further ahead than the lookahead, the listing can be regrouped later."""
    types = ["SCHEDULED", "PENDING"] if include_pending else ["SCHEDULED"]
    until = now + lookahead + horizon
    flow_runs = {"state": {"type": {"any_": types}}, "expected_start_time": {"before_": until.isoformat()}}
    body = {**pool_scope(pool, queues), "flow_runs": flow_runs, "sort": "EXPECTED_START_TIME_ASC", "limit": PAGE}
    runs: list[BacklogRun] = []
    for page in range(MAX_PAGES):
        batch = await client.filter_runs({**body, "offset": page * PAGE})
        runs += [BacklogRun(r.get("work_queue_name"), str((r.get("state") or {}).get("type") or r.get("state_type")),
                            _when(r.get("expected_start_time"))) for r in batch]
        if len(batch) < PAGE:
            listing = QueueListing(tuple(runs), until)
            grouped = listing.grouped(now, lookahead, known)
            return (group_by_queue(runs, now, known) if grouped is None else grouped), listing
    # A backlog this large: exact counts per queue seen, rather than more pages.
    in_window = [r for r in runs if r.expected_start is None or r.expected_start <= now + lookahead]
    names = sorted(set(known) | {r.queue for r in in_window if r.queue})
    return dict(zip(names, await asyncio.gather(*(
        _count_queue(client, pool, name, now, lookahead, include_pending) for name in names)))), None


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
                       include_pending: bool, per_queue: bool, known: set[str],
                       listing: QueueListing | None = None) -> tuple[BacklogReading, QueueListing | None]:
    """What scaling needs beyond the pool observation, in as few reads as it allows.
    ``listing``: the last per-queue listing, if no run of the pool changed since (regrouped
    by the clock while its window allows); the listing to keep for the next cycle."""
    if per_queue:
        grouped = listing.grouped(now, lookahead, known) if listing is not None else None
        if grouped is None:
            horizon = client.listing_horizon(pool, queues)
            grouped, listing = await read_queue_backlogs(client, pool, queues, now, lookahead, include_pending, known,
                                                         horizon or timedelta(0))
            listing = listing if horizon is not None else None
        return BacklogReading(sum(c.upcoming for c in grouped.values()), grouped), listing
    if lookahead > timedelta(0):
        cached = client.upcoming(pool, queues, now, lookahead)
        return BacklogReading(cached if cached is not None else
                              await count_upcoming(client, pool, queues, now, lookahead), None), None
    return BacklogReading(0, None), None
