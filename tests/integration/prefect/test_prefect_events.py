"""The event-stream read cache against a real Prefect server.

An idle pool is served from the cache (no request); a new PENDING run, a run becoming
due (no event marks that moment) and a worker going OFFLINE (a plain SQL update, no
event) are all seen within one interval (30 s); a dropped stream means full reads,
never a stale answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from prefect_workpool_operator.core import freshness
from prefect_workpool_operator.core.health import PoolObservation
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.stream import EventStreams
from prefect_workpool_operator.prefect.http import PrefectHttp
from sandbox.prefect_seed import PrefectSeeder, scheduled_state, utcnow
from sandbox.prefect_scheduler import insert_like_the_scheduler
from sandbox.prefect_server import PrefectServer
from sandbox.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

INTERVAL = 30.0  # the default policy interval: every change must be seen within it


class Counted:
    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, response: httpx.Response) -> None:
        self.requests += 1


@pytest.fixture
async def cached() -> AsyncIterator[tuple[PrefectHttp, Counted]]:
    counted = Counted()
    http = PrefectHttp(event_hooks={"response": [counted]}, events=EventStreams(dt.timedelta(minutes=5)))
    yield http, counted
    await http.aclose()


async def warm(client: PrefectClient, pool: str) -> None:
    """Cycles until the stream is live and every part was read under it."""
    deadline = time.monotonic() + 20
    while True:
        await client.observe_pool(pool, [], utcnow())
        cache = client._caches[(pool, ())]  # noqa: SLF001 (the test looks at what it serves)
        if cache.epoch() is not None and not cache.needed(utcnow()):
            return
        assert time.monotonic() < deadline, "the event stream never went live"
        await asyncio.sleep(0.3)


async def seen_within(client: PrefectClient, pool: str, check: Callable[[PoolObservation], bool]) -> float:
    """Seconds until a cycle (one every 0.5 s) observes ``check``; fails past one interval."""
    start = time.monotonic()
    while time.monotonic() - start < INTERVAL:
        if check(await client.observe_pool(pool, [], utcnow())):
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    raise AssertionError(f"not seen within {INTERVAL:g}s")


async def test_an_idle_pool_is_served_without_requests(seeder: PrefectSeeder, pool_name: str,
                                                        cached: tuple[PrefectHttp, Counted]) -> None:
    http, counted = cached
    seeder.create_ecs_pool(pool_name)
    client = PrefectClient(http, seeder.api_url)
    await warm(client, pool_name)
    before = counted.requests
    for _ in range(3):
        observation = await client.observe_pool(pool_name, [], utcnow())
    assert counted.requests == before
    assert observation.pool_type == "ecs" and observation.pending == 0
    # One stream for every client of the server.
    other = PrefectClient(http, seeder.api_url)
    await warm(other, pool_name)
    assert len(http.events.streams) == 1  # type: ignore[union-attr]


async def test_a_new_pending_run_is_seen_by_its_event(seeder: PrefectSeeder, pool_name: str,
                                                       cached: tuple[PrefectHttp, Counted]) -> None:
    http, _ = cached
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=pool_name)
    client = PrefectClient(http, seeder.api_url)
    await warm(client, pool_name)
    seeder.create_runs(deployment, 1, {"type": "PENDING"})
    await seen_within(client, pool_name, lambda o: o.pending == 1)


async def test_a_run_becoming_due_is_counted_late_at_its_due_time(seeder: PrefectSeeder, pool_name: str,
                                                                   cached: tuple[PrefectHttp, Counted]) -> None:
    http, _ = cached
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=pool_name)
    client = PrefectClient(http, seeder.api_url)
    due = utcnow() + dt.timedelta(seconds=6)
    seeder.create_runs(deployment, 1, scheduled_state(due))
    await warm(client, pool_name)
    assert (await client.observe_pool(pool_name, [], utcnow())).late == 0
    cache = client._caches[(pool_name, ())]  # noqa: SLF001
    assert cache.state.reads[freshness.COUNTS].expires is not None
    while utcnow() < due:
        await asyncio.sleep(0.2)
    # No event marks this moment (the Late event comes ≥15 s later): the due time read from Prefect does.
    assert (await client.observe_pool(pool_name, [], utcnow())).late == 1


async def test_a_worker_going_offline_is_seen_without_an_event(seeder: PrefectSeeder, pool_name: str,
                                                                cached: tuple[PrefectHttp, Counted]) -> None:
    http, _ = cached
    seeder.create_ecs_pool(pool_name)
    # A second worker keeps the pool READY, so no pool status event tells of the first one.
    seeder.heartbeat_worker(pool_name, "w-steady", interval_seconds=60)
    seeder.heartbeat_worker(pool_name, "w-1", interval_seconds=2)
    client = PrefectClient(http, seeder.api_url)
    await warm(client, pool_name)
    assert (await client.observe_pool(pool_name, [], utcnow())).workers_online == 2
    # w-1 stops heartbeating; the foreman (2 s loop here) turns it OFFLINE by SQL.
    await seen_within(client, pool_name, lambda o: o.workers_online == 1 and o.workers_offline == 1)


async def test_a_dropped_stream_means_full_reads_never_stale_ones(seeder: PrefectSeeder, pool_name: str,
                                                                  cached: tuple[PrefectHttp, Counted]) -> None:
    http, counted = cached
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=pool_name)
    host, port = httpx.URL(seeder.api_url).host, httpx.URL(seeder.api_url).port
    with TcpProxy(host, port) as proxy:  # type: ignore[arg-type]
        client = PrefectClient(http, proxy.url("/api"))
        await warm(client, pool_name)
        cache = client._caches[(pool_name, ())]  # noqa: SLF001
        live = cache.epoch()
        assert proxy.cut() >= 1
        while cache.epoch() == live:  # the stream notices its connection closed
            await asyncio.sleep(0.05)
        # A change while the stream is down: no event will ever tell the cache.
        seeder.create_runs(deployment, 1, {"type": "PENDING"})
        before = counted.requests
        observation = await client.observe_pool(pool_name, [], utcnow())
        assert observation.pending == 1, "a cached answer was served across a stream gap"
        assert counted.requests - before >= 5
        await warm(client, pool_name)  # the stream comes back and the cache serves again
        assert cache.stream is not None and cache.stream.connects >= 2


async def test_a_quiet_cycle_with_fresh_pending_runs_sends_nothing(seeder: PrefectSeeder, pool_name: str,
                                                                   cached: tuple[PrefectHttp, Counted]) -> None:
    """Many PENDING runs, none stale: once listed, they are not listed again until a run of the
    pool changes (its event), and then only the new ones."""
    from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
    from tests.support.recovery import NoSecrets

    http, counted = cached
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=pool_name)
    seeder.create_runs(deployment, 5, {"type": "PENDING"})
    runtime = PolicyRuntime()
    body: dict = {"metadata": {"name": "quiet", "namespace": "t", "generation": 1},
                  "spec": {"prefect": {"apiUrl": seeder.api_url, "workPool": pool_name},
                           "staleRuns": {"pendingTimeout": "1h"}}, "status": {}}

    async def cycle() -> int:
        before = counted.requests
        outcome = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
        body["status"] = outcome.status
        assert outcome.status["conditions"][0]["status"] == "True", outcome.status["conditions"][0]
        return counted.requests - before

    async def until_silent() -> None:
        deadline = time.monotonic() + 20
        while await cycle():
            assert time.monotonic() < deadline, "cycles never stopped sending requests"
            await asyncio.sleep(0.3)

    await until_silent()
    assert body["status"]["runs"]["pending"] == 5 and len(runtime.reads.recovery.quiet.pending) == 5
    seeder.create_runs(deployment, 1, {"type": "PENDING"})
    start = time.monotonic()
    while body["status"]["runs"]["pending"] != 6 or len(runtime.reads.recovery.quiet.pending) != 6:
        assert time.monotonic() - start < INTERVAL, "the new PENDING run was not seen within an interval"
        await cycle()
        await asyncio.sleep(0.3)
    await until_silent()


async def test_the_stream_authenticates_to_a_server_with_basic_auth(prefect_auth_server, pool_name: str,
                                                                   cached: tuple[PrefectHttp, Counted]) -> None:
    """The auth message carries ``user:password``; a wrong one keeps the stream down (full reads, no error)."""
    from tests.support.names import BASIC_AUTH
    from tests.integration.prefect.test_prefect_api import basic

    http, counted = cached
    with PrefectSeeder(prefect_auth_server.api_url, auth=prefect_auth_server.auth) as seeder:
        seeder.create_ecs_pool(pool_name)
    client = PrefectClient(http, prefect_auth_server.api_url, auth_header=basic(BASIC_AUTH))
    await warm(client, pool_name)
    wrong = PrefectClient(http, prefect_auth_server.api_url, auth_header=basic("operator:wrong"))
    with pytest.raises(Exception):
        await wrong.observe_pool(pool_name, [], utcnow())  # the REST API refuses it too
    stream = http.events.stream_for(prefect_auth_server.api_url, basic("operator:wrong"))  # type: ignore[union-attr]
    stream.ensure_running()
    deadline = time.monotonic() + 10
    while stream.failures == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert stream.epoch is None


async def test_a_stream_nobody_listens_to_is_closed(seeder: PrefectSeeder, pool_name: str,
                                                    cached: tuple[PrefectHttp, Counted]) -> None:
    import gc

    http, _ = cached
    seeder.create_ecs_pool(pool_name)
    old = PrefectClient(http, seeder.api_url, auth_header="Bearer old-key")
    await warm(old, pool_name)
    del old
    gc.collect()
    new = PrefectClient(http, seeder.api_url, auth_header="Bearer new-key")  # e.g. a rotated key
    await warm(new, pool_name)
    assert len(http.events.streams) == 1  # type: ignore[union-attr]




# -- changes Prefect sends no event for ---------------------------------------------------

@pytest.mark.parametrize("case", ["back online", "new worker"])
async def test_a_claimer_online_again_without_an_event_is_not_judged_offline(
        seeder: PrefectSeeder, pool_name: str, cached: tuple[PrefectHttp, Counted], case: str) -> None:
    """A worker back ONLINE by heartbeats alone, or a new one on a pool already READY: no event.
    The cached workers call its stale run's claimer offline; recovery must not act on that."""
    from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
    from tests.support.recovery import NoSecrets, clock_after, states

    http, counted = cached
    seeder.create_ecs_pool(pool_name)
    seeder.heartbeat_worker(pool_name, "w-steady", interval_seconds=60)  # keeps the pool READY: no pool event
    claimer = "w-1" if case == "back online" else "w-2"
    if case == "back online":
        seeder.heartbeat_worker(pool_name, claimer, interval_seconds=2)
        seeder.wait_for(lambda: any(w["name"] == claimer and w["status"] == "OFFLINE"
                                    for w in seeder.read_workers(pool_name)), timeout=30)
    deployment = seeder.create_deployment(pool_name, name=pool_name)
    [run] = seeder.create_runs(deployment, 1, {"type": "PENDING"})
    seeder.emit_events([seeder.submitted_event(claimer, "ecs", run, pool_name)])
    seeder.wait_for(lambda: seeder.read_events({"event": {"name": ["prefect.worker.submitted-flow-run"]},
                                                "related": {"id": [f"prefect.flow-run.{run}"]}}, limit=5), timeout=30)
    runtime = PolicyRuntime()
    body: dict = {"metadata": {"name": "claimer", "namespace": "t", "generation": 1},
                  "spec": {"prefect": {"apiUrl": seeder.api_url, "workPool": pool_name},
                           "staleRuns": {"pendingTimeout": "30s"}}, "status": {}}

    async def cycle(now: dt.datetime) -> None:
        outcome = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=now)
        body["status"] = outcome.status

    client = PrefectClient(http, seeder.api_url)
    await warm(client, pool_name)  # the stream is live: the cycles below are served from the cache
    first = clock_after(seeder, [run])
    await cycle(first)  # reads the workers: the claimer is not ONLINE (yet)
    seeder.heartbeat_worker(pool_name, claimer, interval_seconds=60)  # a plain SQL upsert, no event
    await cycle(first + dt.timedelta(seconds=30))  # the second observation, one interval later
    assert states(seeder, [run])[run] == ("PENDING", "Pending"), "a live claimer's run was recovered"
    assert body["status"]["staleRuns"]["skipped"]["claimerAlive"] == 1, body["status"].get("staleRuns")


async def test_runs_the_scheduler_inserts_for_a_changed_deployment_are_seen(
        seeder: PrefectSeeder, prefect_server: PrefectServer, pool_name: str,
        cached: tuple[PrefectHttp, Counted]) -> None:
    """A changed (or new, or resumed) deployment's event comes first; the recent-deployments
    scheduler inserts its runs seconds later by SQL, without an event. The counts are read on
    the event and again once the scheduler had time."""
    http, _ = cached
    seeder.create_ecs_pool(pool_name)
    flow = seeder.create_flow("scheduled-flow")
    deployment = seeder._json("POST", "/deployments/", json={  # noqa: SLF001
        "name": pool_name, "flow_id": flow, "work_pool_name": pool_name, "entrypoint": "flows/demo.py:demo",
        "schedules": [{"schedule": {"interval": 60, "anchor_date": utcnow().isoformat()}, "active": True}]})["id"]
    # The foreman marks it NOT_READY (no worker polls its queue): that event first, then quiet.
    seeder.wait_for(lambda: seeder._json("GET", f"/deployments/{deployment}")["status"] == "NOT_READY",  # noqa: SLF001
                    timeout=30)
    client = PrefectClient(http, seeder.api_url)
    lookahead = dt.timedelta(minutes=2)
    await warm(client, pool_name)
    cache = client._caches[(pool_name, ())]  # noqa: SLF001
    await client.observe_pool(pool_name, [], utcnow(), lookahead=lookahead)  # the counts listed that far
    assert not cache.needed(utcnow(), lookahead)
    version = cache.counts_version
    seeder._request("PATCH", f"/deployments/{deployment}", json={"description": "every minute"})  # noqa: SLF001
    start = time.monotonic()
    while cache.counts_version == version:  # the deployment's event: the counts read again, no run yet
        assert time.monotonic() - start < INTERVAL, "the deployment's event did not reach the cache"
        await client.observe_pool(pool_name, [], utcnow(), lookahead=lookahead)
        await asyncio.sleep(0.3)
    assert client.upcoming(pool_name, [], utcnow(), lookahead) == 0
    assert insert_like_the_scheduler(prefect_server, deployment, 3) == 3
    inserted = time.monotonic()
    while client.upcoming(pool_name, [], utcnow(), lookahead) != 2:  # every 60 s: two within 2 min
        assert time.monotonic() - inserted < INTERVAL, "scheduler-inserted runs not seen within an interval"
        await client.observe_pool(pool_name, [], utcnow(), lookahead=lookahead)
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("per_queue", [False, True])
async def test_the_lookahead_window_moves_with_the_clock_without_a_read(
        seeder: PrefectSeeder, pool_name: str, cached: tuple[PrefectHttp, Counted], per_queue: bool) -> None:
    """A run entering the lookahead window sends no event: it is counted from the cached list of
    SCHEDULED runs (read with the counts), at no request, and matches Prefect's own count."""
    from prefect_workpool_operator.prefect.backlog import count_upcoming, read_backlog

    http, counted = cached
    lookahead = dt.timedelta(minutes=2)
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=pool_name)
    seeder.create_runs(deployment, 1, scheduled_state(utcnow() + lookahead + dt.timedelta(seconds=6)))
    client = PrefectClient(http, seeder.api_url)
    listing = None

    async def cycle() -> int:
        nonlocal listing
        now = utcnow()
        await client.observe_pool(pool_name, [], now, lookahead=lookahead)
        reading, listing = await read_backlog(client, pool_name, [], now, lookahead=lookahead, include_pending=False,
                                              per_queue=per_queue, known=set(), listing=listing)
        return reading.upcoming

    deadline = time.monotonic() + 20
    while True:  # warm: the stream live and the run's creation event read
        before = counted.requests
        upcoming = await cycle()
        if counted.requests == before:
            break
        assert time.monotonic() < deadline, "cycles never stopped sending requests"
        await asyncio.sleep(0.3)
    assert upcoming == 0
    start = time.monotonic()
    while upcoming == 0:
        assert time.monotonic() - start < INTERVAL
        await asyncio.sleep(0.5)
        upcoming = await cycle()
    assert counted.requests == before, "the moving window cost a read"
    assert upcoming == 1 == await count_upcoming(client, pool_name, [], utcnow(), lookahead)


async def test_a_hung_server_is_given_up_on_after_the_connect_timeout(cached: tuple[PrefectHttp, Counted]) -> None:
    """A server that accepts the connection and never answers the upgrade: the attempt ends after
    the connect timeout (not aiohttp's 300 s), the stream counts as down (full reads) meanwhile,
    and it tries again."""
    http, _ = cached
    connections: list[asyncio.StreamWriter] = []
    closed = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # never answers; returns when the client closes the connection
        closed.set()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api"
        cache = http.events.cache(url, None, "p")  # type: ignore[union-attr]
        assert cache.stream is not None
        cache.stream.connect_timeout = 1.0
        start = time.monotonic()
        while not connections:
            assert time.monotonic() - start < 10
            await asyncio.sleep(0.05)
        assert cache.needed(utcnow()) == freshness.PARTS  # connecting: read in full
        await asyncio.wait_for(closed.wait(), 10)  # given up: the hung connection closed by us
        assert cache.stream.failures >= 1 and cache.stream.epoch is None
        while len(connections) < 2:  # and tried again after the backoff
            assert time.monotonic() - start < 15
            await asyncio.sleep(0.05)
    finally:
        server.close()
