"""Work pools over REST: the pool, its queues and workers, and the observation of a pool
(status, workers, run counts), served from the event stream's cache when it is on."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prefect_workpool_operator.concurrent_reads import gather_or_cancel
from prefect_workpool_operator.core import freshness, health
from prefect_workpool_operator.core.health import PoolObservation
from prefect_workpool_operator.prefect.flow_runs import FlowRunsApi
from prefect_workpool_operator.prefect.rest import PrefectError, parse_time, quote_segment
from prefect_workpool_operator.prefect.stream import PoolCache

UPCOMING_PAGE = 200  # SCHEDULED runs listed ahead for a lookahead (the server's page maximum)


class WorkPoolsApi(FlowRunsApi):
    """Work pool calls; a pool's run counts are flow-run reads (prefect/flow_runs.py)."""

    async def read_work_pool(self, name: str) -> dict[str, Any]:
        try:
            pool = await self._json("GET", f"/work_pools/{quote_segment(name)}")
        except PrefectError as exc:
            if exc.status_code == 404:
                raise PrefectError(health.WORK_POOL_NOT_FOUND, f"Work pool {name!r} does not exist in Prefect") from None
            raise
        if not isinstance(pool, dict) or "name" not in pool:
            raise PrefectError(health.BAD_RESPONSE, f"GET /work_pools/{name} answered an unexpected body")
        return pool

    async def read_queue_names(self, pool: str) -> set[str]:
        queues = await self._json("POST", f"/work_pools/{quote_segment(pool)}/queues/filter", {"limit": 200})
        return {q["name"] for q in queues}

    async def read_workers(self, pool: str) -> list[dict[str, Any]]:
        workers = await self._json("POST", f"/work_pools/{quote_segment(pool)}/workers/filter", {"limit": 200})
        if not isinstance(workers, list):
            raise PrefectError(health.BAD_RESPONSE, "workers/filter answered an unexpected body")
        return workers

    async def observe_pool(self, pool: str, queues: list[str], now: datetime, *,
                           lookahead: timedelta = timedelta(0)) -> PoolObservation:
        """Pool status, workers and run counts: five small reads (six on a client's first cycle),
        or, with the event stream on, only the parts it or their own expiry says changed
        (``core.freshness``), plus the SCHEDULED runs not yet due when the counts are read
        (the first, or all within ``lookahead`` and the resync: see ``upcoming``)."""
        version = await self.server_version()
        cache = self._cache_for(pool, queues)
        if cache is not None and not cache.state.reads:
            await cache.first_subscription()
        parts = cache.needed(now, lookahead) if cache is not None else freshness.PARTS
        if cache is not None:
            cache.served += len(freshness.PARTS - parts)
        values = await self._read_parts(pool, queues, now, cache, parts, lookahead)
        work_pool, workers = values[freshness.POOL], values[freshness.WORKERS]
        late, pending, running, _ = values[freshness.COUNTS]
        online = frozenset(str(w.get("name")) for w in workers if w.get("status") == "ONLINE")
        return PoolObservation(
            pool_status=str(work_pool.get("status") or "UNKNOWN"),
            workers_online=len(online),
            workers_offline=len(workers) - len(online),
            online_workers=online,
            base_job_template=work_pool.get("base_job_template") or None,
            pool_type=str(work_pool["type"]) if work_pool.get("type") else None,
            late=late,
            pending=pending,
            running=running,
            server_version=version,
        )

    async def _read_parts(self, pool: str, queues: list[str], now: datetime, cache: PoolCache | None,
                          parts: frozenset[str], lookahead: timedelta) -> dict[str, Any]:
        """Reads ``parts`` into the cache (when there is one); the values of every part."""
        values: dict[str, Any] = dict(cache.values) if cache is not None else {}
        epoch = cache.epoch() if cache is not None else None
        if cache is not None:
            cache.state = freshness.reading(cache.state, parts)
            cache.read += len(parts)
        try:
            if freshness.POOL in parts:  # first: a missing pool is the whole answer
                values[freshness.POOL] = await self.read_work_pool(pool)
            scope = pool_scope(pool, queues)
            horizon = freshness.upcoming_horizon(lookahead, cache.resync) if cache is not None and lookahead else None
            reads = [p for p in (freshness.WORKERS, freshness.COUNTS) if p in parts]
            fetched = await gather_or_cancel(*(self.read_workers(pool) if p == freshness.WORKERS
                                   else self._read_counts(scope, now, due=epoch is not None, horizon=horizon)
                                   for p in reads))
            values.update(zip(reads, fetched))
        except BaseException as exc:
            if cache is not None:
                cache.state = freshness.read_failed(cache.state, parts)
            if isinstance(exc, PrefectError) and exc.cause:
                # Which of the concurrent reads failed first varies from cycle to cycle; the
                # message must not (it is the Ready message: a change is a status write and an Event).
                raise PrefectError(exc.reason, f"Prefect at {self._safe('')} did not answer the reads of work pool "
                                   f"{pool!r}: {exc.cause}") from None
            raise
        if cache is not None:
            for part in parts:
                expires = None
                if part == freshness.WORKERS:
                    expires = freshness.worker_deadline([_worker_liveness(w) for w in values[part]])
                elif part == freshness.COUNTS:
                    upcoming = values[part][3]
                    expires = freshness.counts_expiry(upcoming, lookahead) if upcoming is not None else None
                    cache.counts_version += 1
                cache.state = freshness.read_done(cache.state, part, started=now, epoch=epoch, expires=expires)
            cache.values = values
        return values

    async def _read_counts(
        self, scope: dict[str, Any], now: datetime, *, due: bool, horizon: timedelta | None = None,
    ) -> tuple[int, int, int, freshness.Upcoming | None]:
        """Late (due SCHEDULED), PENDING and RUNNING counts; with ``due``, also the SCHEDULED
        runs not yet due (no event marks the moment one becomes due): the first one, or with a
        ``horizon`` every one due within it (one page), which the lookahead is counted from."""
        scheduled = {"state": {"type": {"any_": ["SCHEDULED"]}}}
        reads = [
            self.count_runs({**scope, "flow_runs": {**scheduled, "expected_start_time": {"before_": now.isoformat()}}}),
            self.count_runs({**scope, "flow_runs": {"state": {"type": {"any_": ["PENDING"]}}}}),
            self.count_runs({**scope, "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}),
        ]
        if due:
            window: dict[str, Any] = {"after_": now.isoformat()}
            if horizon is not None:
                window["before_"] = (now + horizon).isoformat()
            reads.append(self._upcoming({**scope, "flow_runs": {**scheduled, "expected_start_time": window}},
                                        None if horizon is None else now + horizon))
        late, pending, running, *rest = await gather_or_cancel(*reads)
        return late, pending, running, (rest[0] if rest else None)

    async def _upcoming(self, body: dict[str, Any], until: datetime | None) -> freshness.Upcoming:
        limit = 1 if until is None else UPCOMING_PAGE
        runs = await self._json("POST", "/flow_runs/filter", {**body, "sort": "EXPECTED_START_TIME_ASC", "limit": limit})
        if not isinstance(runs, list):
            raise PrefectError(health.BAD_RESPONSE, "flow_runs/filter answered an unexpected body")
        starts = tuple(t for t in (parse_time(r.get("expected_start_time")) for r in runs) if t is not None)
        if until is not None and len(runs) >= limit and starts:
            until = starts[-1] - timedelta(microseconds=1)  # a full page: complete only before its last run
        return freshness.Upcoming(starts, until)

    async def online_workers_read(self, pool: str, queues: list[str], now: datetime) -> frozenset[str] | None:
        """The pool's ONLINE workers read now, if this cycle (``now``) served them from the cache:
        no event tells of a worker back ONLINE or a new one on a READY pool. None: already read."""
        cache = self._caches.get((pool, tuple(queues)))
        if cache is None or freshness.read_at(cache.state, freshness.WORKERS, now):
            return None
        values = await self._read_parts(pool, queues, now, cache, frozenset({freshness.WORKERS}), timedelta(0))
        return frozenset(str(w.get("name")) for w in values[freshness.WORKERS] if w.get("status") == "ONLINE")

    def listing_horizon(self, pool: str, queues: list[str]) -> timedelta | None:
        """How much further than the lookahead a reusable listing of the pool's runs reaches;
        None without the event stream (nothing says when a listing goes stale)."""
        cache = self._caches.get((pool, tuple(queues)))
        return None if cache is None else freshness.upcoming_horizon(timedelta(0), cache.resync)

    def upcoming(self, pool: str, queues: list[str], now: datetime, lookahead: timedelta) -> int | None:
        """SCHEDULED runs due within ``lookahead``, counted from the cached list (no request);
        None when there is none covering the window (read it)."""
        cache = self._caches.get((pool, tuple(queues)))
        counts = cache.values.get(freshness.COUNTS) if cache is not None else None
        if counts is None or counts[3] is None:
            return None
        return freshness.upcoming_count(counts[3], now, lookahead)

    def counts_version(self, pool: str, queues: list[str]) -> int | None:
        """Changes whenever the pool's run counts were read from Prefect again (an event for one
        of its runs, a due time, a resync); None without the event stream: every read is fresh."""
        cache = self._caches.get((pool, tuple(queues)))
        return cache.counts_version if cache is not None else None

    def _cache_for(self, pool: str, queues: list[str]) -> PoolCache | None:
        streams = self._http.events
        if streams is None:
            return None
        key = (pool, tuple(queues))
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = streams.cache(self.api_url, self._headers.get("Authorization"), pool)
        return cache

    async def update_base_job_template(self, pool: str, template: dict[str, Any]) -> None:
        """PATCH replaces the template whole; the caller changed only the declared defaults."""
        await self._request("PATCH", f"/work_pools/{quote_segment(pool)}", {"base_job_template": template})

    async def check_queues(self, pool: str, queues: list[str]) -> None:
        if not queues:
            return
        missing = sorted(set(queues) - await self.read_queue_names(pool))
        if missing:
            raise PrefectError(health.WORK_QUEUE_NOT_FOUND, f"Work pool {pool!r} has no queue(s) {', '.join(map(repr, missing))}")


def pool_scope(pool: str, queues: list[str]) -> dict[str, Any]:
    """The part of a flow-run filter body that restricts it to the pool (and queues)."""
    scope: dict[str, Any] = {"work_pools": {"name": {"any_": [pool]}}}
    if queues:
        scope["work_pool_queues"] = {"name": {"any_": list(queues)}}
    return scope


def _worker_liveness(worker: dict[str, Any]) -> tuple[str, datetime | None, float | None]:
    interval = worker.get("heartbeat_interval_seconds")
    return (str(worker.get("status")), parse_time(worker.get("last_heartbeat_time")),
            float(interval) if isinstance(interval, (int, float)) else None)
