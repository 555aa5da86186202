"""Async adapter for the Prefect 3 REST API.

One shared ``PrefectHttp`` (a bounded connection pool per server, see prefect/http.py) serves
every policy; a ``PrefectClient`` adds a policy's base URL, credentials and timeout. Errors become
``PrefectError`` with a stable reason from ``core.health`` and a message that never
contains credentials.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from prefect_workpool_operator.core import freshness, health
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.core.health import PoolObservation
from prefect_workpool_operator.core.recovery_plan import REQUEUED_STATE_NAME, WRITE_BATCH as BULK_LIMIT
from prefect_workpool_operator.concurrent_reads import gather_or_cancel
from prefect_workpool_operator.prefect.stream import PoolCache
from prefect_workpool_operator.prefect.http import PrefectHttp, SlotTimeout, retry_after_seconds
from prefect_workpool_operator.core.stale import WorkerLifecycle

log = logging.getLogger(__name__)

TRANSIENT_STATUS = {500, 502, 503, 504}  # 503 is also SQLite's "database is locked"
UPCOMING_PAGE = 200  # SCHEDULED runs listed ahead for a lookahead (the server's page maximum)
PAGE_OVERLAP = 50  # runs re-read at each offset page boundary (only without expected start times)
EVENT_IDS_PER_CALL = 200  # run ids per events query (checked live; the next-page URL carries them)
COUNT_IDS_PER_CALL = 1000  # run ids per events count: one answer, no next-page URL
FLOW_RUN_PREFIX = "prefect.flow-run."
SUBMITTED_EVENT = "prefect.worker.submitted-flow-run"
EXECUTED_EVENT = "prefect.worker.executed-flow-run"
WORKER_STARTED_EVENT = "prefect.worker.started"
WORKER_STOPPED_EVENT = "prefect.worker.stopped"


@dataclass(frozen=True)
class Claim:
    worker: str | None
    executed: bool = False
    at: datetime | None = None  # when the worker emitted submitted-flow-run (its own clock)


class PrefectError(OperatorError):
    """A Prefect API failure; ``status_code`` is None when no HTTP answer came."""

    def __init__(
        self, reason: str, message: str, *, retry_after: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after  # the server's Retry-After hint, for the next attempt
        self.status_code = status_code
        self.received = ""  # "HTTP 404 (text/html)": what answered, for NotPrefectApi
        self.cause = ""  # for unreachable: why, without the request (the same each cycle while it lasts)


class PrefectClient:
    """The calls this operator makes to one Prefect API, with retries on 5xx/429."""

    def __init__(
        self,
        http: httpx.AsyncClient | PrefectHttp,
        api_url: str,
        *,
        auth_header: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
    ) -> None:
        # A bare httpx client (tests, benchmarks) gets its own slots; the operator passes its shared PrefectHttp.
        self._http = http if isinstance(http, PrefectHttp) else PrefectHttp(client=http)
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": auth_header} if auth_header else {}
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._version: str | None = None
        self._version_checked = False
        self.bulk_unsupported = False  # learnt from a 404/405 on bulk_set_state
        self._caches: dict[tuple[str, tuple[str, ...]], PoolCache] = {}

    # -- transport ------------------------------------------------------------------

    async def _request(self, method: str, path: str, json: Any = None, *, replay: bool = True) -> httpx.Response:
        """``replay=False`` (state writes): sent again only when it cannot have reached the
        server's handler (no connection, 429, 503); after a timeout or a cut answer it may have
        been applied, and a guarded write replayed later could catch a run a worker has just
        claimed again (PENDING anew)."""
        url = f"{self.api_url}{path}"
        last: PrefectError | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._delay(attempt, last))
            try:
                response = await self._http.request(method, url, json=json, headers=self._headers, timeout=self._timeout)
            except SlotTimeout:
                # Overloaded here, not there: retrying would only queue more. The next cycle tries again.
                busy = PrefectError(health.UNREACHABLE, f"{method} {self._safe(path)} not sent: the operator's "
                                    f"connections to Prefect were all busy for {self._timeout:g}s")
                busy.cause = f"the operator's connections to Prefect were all busy for {self._timeout:g}s"
                raise busy from None
            except httpx.InvalidURL as exc:
                raise PrefectError(health.INVALID_API_URL, f"apiUrl {self.api_url!r} is not a valid URL: {exc}") from None
            except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                last = PrefectError(health.UNREACHABLE, f"{method} {self._safe(path)} failed: {type(exc).__name__}")
                last.cause = (f"no answer within {self._timeout:g}s" if isinstance(exc, httpx.TimeoutException)
                              else type(exc).__name__)
                if not replay and not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
                    raise last from None
                continue
            except httpx.UnsupportedProtocol:
                raise PrefectError(health.INVALID_API_URL, f"apiUrl {self.api_url!r} must start with http:// or https://") from None
            if response.status_code in TRANSIENT_STATUS and not replay and response.status_code != 503:
                raise PrefectError(health.SERVER_ERROR, f"{method} {self._safe(path)} answered {_received(response)}"
                                   " (not sent again: it may have been applied)", status_code=response.status_code)
            if response.status_code in TRANSIENT_STATUS or response.status_code == 429:
                reason = health.RATE_LIMITED if response.status_code == 429 else health.SERVER_ERROR
                last = PrefectError(
                    reason, f"{method} {self._safe(path)} answered {_received(response)}",
                    retry_after=retry_after_seconds(response),
                )
                continue
            self._raise_for_status(method, path, response)
            return response
        assert last is not None
        raise last

    def _delay(self, attempt: int, last: PrefectError | None) -> float:
        if last is not None and last.retry_after is not None:
            return last.retry_after
        return self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random())

    def _raise_for_status(self, method: str, path: str, response: httpx.Response) -> None:
        code = response.status_code
        if code < 400:
            return
        where = f"{method} {self._safe(path)}"
        if code == 401:
            raise PrefectError(health.UNAUTHORIZED, f"{where} answered 401: the credentials were refused")
        if code == 403:
            raise PrefectError(health.FORBIDDEN, f"{where} answered 403: the credentials lack permission")
        error = PrefectError(health.BAD_RESPONSE, f"{where} answered HTTP {code}", status_code=code)
        error.received = _received(response)
        raise error

    def _safe(self, path: str) -> str:
        """Host and path only: no query string, no userinfo."""
        parts = urlsplit(self.api_url + path)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    async def _json(self, method: str, path: str, json: Any = None, *, replay: bool = True) -> Any:
        response = await self._request(method, path, json, replay=replay)
        try:
            return response.json()
        except ValueError:
            raise PrefectError(
                health.NOT_PREFECT_API,
                f"{method} {self._safe(path)} answered {_received(response)}, not JSON: apiUrl is not a Prefect API",
            ) from None

    # -- reads ----------------------------------------------------------------------

    async def server_version(self) -> str | None:
        """The server's version (cached per client); None where it is not exposed (Prefect Cloud)."""
        if not self._version_checked:
            await self._check_is_prefect()
            try:
                version = await self._json("GET", "/admin/version")
            except PrefectError as exc:
                if exc.status_code != 404:
                    raise
                version = None  # not exposed by Prefect Cloud: not a reason to stop
            if version is not None and not isinstance(version, str):
                raise PrefectError(health.NOT_PREFECT_API, "GET /admin/version did not answer a version: apiUrl is not a Prefect API")
            if health.server_too_old(version):
                raise PrefectError(
                    health.SERVER_TOO_OLD,
                    f"Prefect server {version} is too old: version {health.MIN_SERVER_MAJOR}.x or newer is required",
                )
            self._version, self._version_checked = version, True
        return self._version

    async def _check_is_prefect(self) -> None:
        """/health is open even with auth on: it tells "not Prefect" apart from "wrong pool"."""
        try:
            response = await self._request("GET", "/health")
        except PrefectError as exc:
            if exc.status_code is None:
                raise
            received = exc.received
        else:
            try:
                if response.status_code == 200 and response.json() is True:
                    return
            except ValueError:
                pass
            received = _received(response)
        raise PrefectError(
            health.NOT_PREFECT_API,
            f"{self._safe('/health')} answered {received}, not a Prefect API's health check: apiUrl should end "
            "in /api (self-hosted) or /api/accounts/<id>/workspaces/<id> (Prefect Cloud)",
        )

    async def read_work_pool(self, name: str) -> dict[str, Any]:
        try:
            pool = await self._json("GET", f"/work_pools/{_quote(name)}")
        except PrefectError as exc:
            if exc.status_code == 404:
                raise PrefectError(health.WORK_POOL_NOT_FOUND, f"Work pool {name!r} does not exist in Prefect") from None
            raise
        if not isinstance(pool, dict) or "name" not in pool:
            raise PrefectError(health.BAD_RESPONSE, f"GET /work_pools/{name} answered an unexpected body")
        return pool

    async def read_queue_names(self, pool: str) -> set[str]:
        queues = await self._json("POST", f"/work_pools/{_quote(pool)}/queues/filter", {"limit": 200})
        return {q["name"] for q in queues}

    async def read_workers(self, pool: str) -> list[dict[str, Any]]:
        workers = await self._json("POST", f"/work_pools/{_quote(pool)}/workers/filter", {"limit": 200})
        if not isinstance(workers, list):
            raise PrefectError(health.BAD_RESPONSE, "workers/filter answered an unexpected body")
        return workers

    async def read_flow_run(self, run_id: str) -> dict[str, Any] | None:
        """One flow run; None when the server does not know it (``why``)."""
        try:
            run = await self._json("GET", f"/flow_runs/{_quote(run_id)}")
        except PrefectError as exc:
            if exc.status_code in (404, 422):  # 422: not a UUID
                return None
            raise
        return run if isinstance(run, dict) else None

    async def count_runs(self, body: dict[str, Any]) -> int:
        count = await self._json("POST", "/flow_runs/count", body)
        if not isinstance(count, int):
            raise PrefectError(health.BAD_RESPONSE, "flow_runs/count answered an unexpected body")
        return count

    async def filter_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        runs = await self._json("POST", "/flow_runs/filter", body)
        if not isinstance(runs, list):
            raise PrefectError(health.BAD_RESPONSE, "flow_runs/filter answered an unexpected body")
        return runs

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
        starts = tuple(t for t in (_parse_time(r.get("expected_start_time")) for r in runs) if t is not None)
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

    # -- stale-run recovery ----------------------------------------------------------

    async def pending_candidates(
        self, scope: dict[str, Any], expected_before: datetime | None, tags: list[str], *, page_size: int = 200,
        max_pages: int = 100, excluding: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """PENDING runs expected to start before ``expected_before`` (None: any), oldest first,
        every page; ``excluding``: run ids left out by the server (runs already known).

        Paged by key, not offset: each page asks for runs expected at or after the last
        page's latest time, leaving out the runs already read at exactly that time. Runs
        leaving PENDING meanwhile (workers start them) shift nothing, so no run is skipped
        and no page is re-read (offset pages had to overlap). Every PENDING run has an
        expected start (the server sets it with the run's first state).
        """
        flow_runs: dict[str, Any] = {"state": {"type": {"any_": ["PENDING"]}}}
        if expected_before is not None:
            flow_runs["expected_start_time"] = {"before_": expected_before.isoformat()}
        if tags:
            flow_runs["tags"] = {"all_": list(tags)}
        runs: dict[str, dict[str, Any]] = {}
        after: str | None = None  # the latest expected start read so far
        at_after: list[str] = []  # the runs read with exactly that expected start
        offset = 0  # only when a run comes without an expected start (not seen on 3.8 servers)
        for _ in range(max_pages):
            page = dict(flow_runs)
            if after is not None:
                page["expected_start_time"] = {**flow_runs.get("expected_start_time", {}), "after_": after}
            left_out = [*(excluding or []), *at_after]
            if left_out:
                page["id"] = {"not_any_": left_out}
            body = {**scope, "flow_runs": page, "sort": "EXPECTED_START_TIME_ASC", "limit": page_size,
                    "offset": offset}
            batch = await self._json("POST", "/flow_runs/filter", body)
            if not isinstance(batch, list):
                raise PrefectError(health.BAD_RESPONSE, "flow_runs/filter answered an unexpected body")
            runs.update((str(r.get("id")), r) for r in batch)
            if len(batch) < page_size:
                break
            last = _parse_time(batch[-1].get("expected_start_time"))
            if last is None or offset:
                # No key to page by: offset pages, overlapping so a shift cannot skip a run.
                offset += page_size - min(PAGE_OVERLAP, page_size // 2)
                continue
            same = [str(r.get("id")) for r in batch if _parse_time(r.get("expected_start_time")) == last]
            at_after = [*at_after, *same] if after is not None and _parse_time(after) == last else same
            after = str(batch[-1]["expected_start_time"])
        return list(runs.values())

    async def claims(self, run_ids: list[str], since: datetime) -> dict[str, Claim]:
        """Who claimed each run (its latest prefect.worker.submitted-flow-run event) and whether
        the worker reported the infrastructure (prefect.worker.executed-flow-run)."""
        claims: dict[str, Claim] = {}
        for chunk in _chunks(run_ids, EVENT_IDS_PER_CALL):
            body = {
                "filter": {
                    "event": {"name": [SUBMITTED_EVENT, EXECUTED_EVENT]},
                    "related": {"id": [f"{FLOW_RUN_PREFIX}{i}" for i in chunk], "role": ["flow-run"]},
                    "occurred": {"since": since.isoformat()},
                    "order": "ASC",
                },
                "limit": 50,
            }
            page = await self._json("POST", "/events/filter", body)
            while True:
                for event in page.get("events") or []:
                    _record_claim(claims, event)
                next_page = page.get("next_page")
                if not next_page:
                    break
                # The server builds the link from its own base URL; keep ours (proxies, Cloud paths).
                page = await self._json("GET", "/events/filter/next?" + urlsplit(next_page).query)
        return claims

    async def requeue_counts(self, run_ids: list[str], since: datetime) -> dict[str, int]:
        """How often each run was requeued before: its ``prefect.flow-run.Requeued`` events."""
        counts: dict[str, int] = {}
        for chunk in _chunks(run_ids, COUNT_IDS_PER_CALL):
            body = {
                "filter": {
                    "event": {"name": [f"prefect.flow-run.{REQUEUED_STATE_NAME}"]},
                    "resource": {"id": [f"{FLOW_RUN_PREFIX}{i}" for i in chunk]},
                    "occurred": {"since": since.isoformat()},
                },
                "time_unit": "day",
                "time_interval": 1.0,
            }
            for row in await self._json("POST", "/events/count-by/resource", body):
                counts[str(row["value"]).removeprefix(FLOW_RUN_PREFIX)] = int(row["count"])
        return counts

    async def worker_lifecycle(self, names: list[str], since: datetime) -> dict[str, WorkerLifecycle]:
        """The latest ``prefect.worker.started`` / ``stopped`` event of each named worker since
        ``since``: one query (workers are few), paged if needed."""
        if not names:
            return {}
        body = {
            "filter": {
                "event": {"name": [WORKER_STARTED_EVENT, WORKER_STOPPED_EVENT]},
                "resource": {"id_prefix": ["prefect.worker."], "labels": {"prefect.resource.name": sorted(names)}},
                "occurred": {"since": since.isoformat()},
                "order": "ASC",
            },
            "limit": 50,
        }
        found: dict[str, WorkerLifecycle] = {}
        page = await self._json("POST", "/events/filter", body)
        while True:
            for event in page.get("events") or []:
                name = str((event.get("resource") or {}).get("prefect.resource.name") or "")
                at = _occurred(event)
                if name not in names or at is None:
                    continue  # the server matches labels with LIKE: keep exact names only
                life = found.get(name, WorkerLifecycle())
                if event.get("event") == WORKER_STARTED_EVENT:
                    found[name] = WorkerLifecycle(started=max(filter(None, (life.started, at))), stopped=life.stopped)
                else:
                    found[name] = WorkerLifecycle(started=life.started, stopped=max(filter(None, (life.stopped, at))))
            next_page = page.get("next_page")
            if not next_page:
                return found
            page = await self._json("GET", "/events/filter/next?" + urlsplit(next_page).query)

    async def requeued_total(self, pool: str, since: datetime) -> int:
        """Requeues of the pool's runs since ``since``: one count of their Requeued events.

        The operator is what names a state "Requeued", so this is its own tally, kept by
        Prefect (within its event retention): an operator restart cannot lose it.
        """
        body = {
            "filter": {
                "event": {"name": [f"prefect.flow-run.{REQUEUED_STATE_NAME}"]},
                "related": {"role": ["work-pool"], "labels": {"prefect.resource.name": [pool]}},
                "occurred": {"since": since.isoformat()},
            },
        }
        rows = await self._json("POST", "/events/count-by/event", body)
        if not isinstance(rows, list):
            raise PrefectError(health.BAD_RESPONSE, "events/count-by/event answered an unexpected body")
        return sum(int(row.get("count") or 0) for row in rows if isinstance(row, dict))

    def write_slots(self) -> asyncio.Semaphore:
        """Hold one while sending a state write: bounds them per server or account, all policies together."""
        return self._http.write_slots(self.api_url)

    async def bulk_set_pending_runs(self, run_ids: list[str], state: dict[str, Any]) -> dict[str, str] | None:
        """Set ``state`` on those of ``run_ids`` still PENDING; None when the server lacks the endpoint.

        Returns run id -> orchestration status (ACCEPT, REJECT, ...); runs missing from
        the answer had left PENDING when the server selected them.
        """
        if len(run_ids) > BULK_LIMIT:
            raise ValueError(f"at most {BULK_LIMIT} runs per bulk call")
        body = {
            "flow_runs": {"id": {"any_": list(run_ids)}, "state": {"type": {"any_": ["PENDING"]}}},
            "state": state,
            "force": False,
            "limit": len(run_ids),
        }
        try:
            answer = await self._json("POST", "/flow_runs/bulk_set_state", body, replay=False)
        except PrefectError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        # Match on each result's own flow_run_id: state.state_details.flow_run_id is unreliable there.
        return {str(r["flow_run_id"]): str(r["status"]) for r in answer.get("results") or []}

    async def set_pending_run(self, run_id: str, state: dict[str, Any]) -> str | None:
        """Fallback for servers without bulk_set_state: re-read, then set the state if still PENDING.

        Returns the orchestration status, or None when the run had left PENDING.
        """
        run = await self._json("GET", f"/flow_runs/{_quote(run_id)}")
        if ((run.get("state") or {}).get("type")) != "PENDING":
            return None
        answer = await self._json("POST", f"/flow_runs/{_quote(run_id)}/set_state", {"state": state, "force": False},
                                  replay=False)
        return str(answer.get("status"))

    async def update_base_job_template(self, pool: str, template: dict[str, Any]) -> None:
        """PATCH replaces the template whole; the caller changed only the declared defaults."""
        await self._request("PATCH", f"/work_pools/{_quote(pool)}", {"base_job_template": template})

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


def _record_claim(claims: dict[str, Claim], event: dict[str, Any]) -> None:
    runs = [r["prefect.resource.id"].removeprefix(FLOW_RUN_PREFIX) for r in event.get("related") or []
            if r.get("prefect.resource.role") == "flow-run"]
    worker = (event.get("resource") or {}).get("prefect.resource.name")
    for run_id in runs:
        if event.get("event") == SUBMITTED_EVENT:  # ascending order: the latest claim wins
            claims[run_id] = Claim(worker=worker, executed=False, at=_occurred(event))
        elif event.get("event") == EXECUTED_EVENT:
            previous = claims.get(run_id)
            claims[run_id] = Claim(worker=previous.worker if previous else worker, executed=True,
                                   at=previous.at if previous else None)


def _worker_liveness(worker: dict[str, Any]) -> tuple[str, datetime | None, float | None]:
    interval = worker.get("heartbeat_interval_seconds")
    return (str(worker.get("status")), _parse_time(worker.get("last_heartbeat_time")),
            float(interval) if isinstance(interval, (int, float)) else None)


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _occurred(event: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event["occurred"]))
    except (KeyError, ValueError):
        return None


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _received(response: httpx.Response) -> str:
    """Status and content type (and a redirect's target host), never the body."""
    kind = response.headers.get("content-type", "no content type").split(";")[0].strip() or "no content type"
    text = f"HTTP {response.status_code} ({kind})"
    location = response.headers.get("location")
    if response.is_redirect and location:
        parts = urlsplit(location)
        text += f" redirecting to {parts.hostname or 'a relative path'}{parts.path[:64] if parts.hostname else ''}"
    return text


def _quote(segment: str) -> str:
    return quote(segment, safe="")
