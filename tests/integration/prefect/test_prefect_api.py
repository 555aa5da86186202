"""PrefectClient against a real Prefect server: figures, auth, and each failure reason."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import httpx
import pytest

from prefect_workpool_operator.core import health
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.rest import PrefectError
from sandbox.processes import free_port
from sandbox.prefect_seed import PrefectSeeder, late_state, scheduled_state, utcnow
from tests.support.names import BASIC_AUTH

pytestmark = pytest.mark.integration


@pytest.fixture
async def http():
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        client.recorded = requests  # type: ignore[attr-defined]
        yield client


def basic(value: str) -> str:
    return "Basic " + base64.b64encode(value.encode()).decode()


async def test_observed_figures_match_what_was_created(seeder: PrefectSeeder, pool_name: str, http) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.create_runs(deployment, 3, {"type": "PENDING"})
    seeder.create_runs(deployment, 4, late_state(120))
    seeder.create_runs(deployment, 2, scheduled_state(utcnow() + dt.timedelta(hours=1)))  # not due: not counted
    for run in seeder.create_runs(deployment, 2, {"type": "PENDING"}):
        seeder.set_state(run, {"type": "RUNNING"})
    seeder.heartbeat_worker(pool_name, "worker-a")

    client = PrefectClient(http, seeder.api_url)
    observed = await client.observe_pool(pool_name, [], utcnow())

    assert (observed.late, observed.pending, observed.running) == (4, 3, 2)
    assert (observed.workers_online, observed.workers_offline) == (1, 0)
    assert observed.pool_status == "READY"
    assert observed.server_version == "3.8.8"


async def test_queue_filter_restricts_the_counts(seeder: PrefectSeeder, pool_name: str, http) -> None:
    seeder.create_ecs_pool(pool_name)
    seeder.create_queue(pool_name, "fast")
    seeder.create_queue(pool_name, "slow")
    fast = seeder.create_deployment(pool_name, "fast", queue="fast")
    slow = seeder.create_deployment(pool_name, "slow", queue="slow")
    seeder.create_runs(fast, 2, {"type": "PENDING"})
    seeder.create_runs(slow, 5, {"type": "PENDING"})

    client = PrefectClient(http, seeder.api_url)
    assert (await client.observe_pool(pool_name, ["fast"], utcnow())).pending == 2
    assert (await client.observe_pool(pool_name, ["fast", "slow"], utcnow())).pending == 7
    await client.check_queues(pool_name, ["fast", "slow"])
    with pytest.raises(PrefectError) as err:
        await client.check_queues(pool_name, ["fast", "nope"])
    assert err.value.reason == health.WORK_QUEUE_NOT_FOUND and "'nope'" in err.value.message


async def test_steady_state_is_five_small_reads_and_no_writes(seeder: PrefectSeeder, pool_name: str, http) -> None:
    seeder.create_ecs_pool(pool_name)
    client = PrefectClient(http, seeder.api_url)
    await client.observe_pool(pool_name, [], utcnow())  # first cycle also checks /health and the version
    first = len(http.recorded)
    await client.observe_pool(pool_name, [], utcnow())
    steady = http.recorded[first:]
    paths = sorted(r.url.path.removeprefix("/api") for r in steady)
    print(f"first cycle: {first} requests; steady cycle: {len(steady)} requests: {paths}")
    assert len(steady) == 5
    reads = {"/flow_runs/count", f"/work_pools/{pool_name}", f"/work_pools/{pool_name}/workers/filter"}
    assert set(paths) == reads  # counts and filters only: nothing that changes state


async def test_unknown_pool(seeder: PrefectSeeder, http) -> None:
    with pytest.raises(PrefectError) as err:
        await PrefectClient(http, seeder.api_url).observe_pool("no-such-pool", [], utcnow())
    assert err.value.reason == health.WORK_POOL_NOT_FOUND
    assert "'no-such-pool'" in err.value.message


async def test_unreachable_url_fails_fast_with_reason(http) -> None:
    client = PrefectClient(http, f"http://127.0.0.1:{free_port()}/api", timeout=2, attempts=2, backoff=0.05)
    with pytest.raises(PrefectError) as err:
        await client.observe_pool("p", [], utcnow())
    assert err.value.reason == health.UNREACHABLE


async def test_url_that_is_not_the_api_root(prefect_server, http) -> None:
    not_api = prefect_server.api_url.removesuffix("/api")
    with pytest.raises(PrefectError) as err:
        await PrefectClient(http, not_api).observe_pool("p", [], utcnow())
    assert err.value.reason == health.NOT_PREFECT_API
    assert "should end in /api" in err.value.message and "HTTP 404 (application/json)" in err.value.message


async def test_basic_auth_server(prefect_auth_server, http) -> None:
    with PrefectSeeder(prefect_auth_server.api_url, auth=prefect_auth_server.auth) as seeder:
        seeder.create_ecs_pool("guarded")
        deployment = seeder.create_deployment("guarded")
        seeder.create_runs(deployment, 2, {"type": "PENDING"})

    good = PrefectClient(http, prefect_auth_server.api_url, auth_header=basic(BASIC_AUTH))
    assert (await good.observe_pool("guarded", [], utcnow())).pending == 2

    for header in (basic("operator:wrong"), None):
        client = PrefectClient(http, prefect_auth_server.api_url, auth_header=header)
        with pytest.raises(PrefectError) as err:
            await client.observe_pool("guarded", [], utcnow())
        assert err.value.reason == health.UNAUTHORIZED
        assert "wrong" not in err.value.message and "s3cr3t" not in err.value.message


class Flaky(httpx.AsyncBaseTransport):
    """The real server behind a transport that answers the first ``n`` matching requests itself."""

    def __init__(self, path_suffix: str, responses: list[httpx.Response]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.suffix, self.responses = path_suffix, list(responses)
        self.hits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(self.suffix) and self.responses:
            self.hits += 1
            return self.responses.pop(0)
        return await self.inner.handle_async_request(request)


async def test_transient_errors_are_retried_and_retry_after_is_honoured(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    flaky = Flaky("/workers/filter", [httpx.Response(503, text="database is locked"),
                                      httpx.Response(429, headers={"Retry-After": "1"})])
    async with httpx.AsyncClient(transport=flaky) as http:
        client = PrefectClient(http, seeder.api_url, backoff=0.05)
        started = asyncio.get_running_loop().time()
        observed = await client.observe_pool(pool_name, [], utcnow())
        waited = asyncio.get_running_loop().time() - started
    assert flaky.hits == 2 and observed.pool_status in {"READY", "NOT_READY"}
    assert waited >= 1.0  # the 429's Retry-After was honoured


async def test_persistent_rate_limiting_is_reported(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    flaky = Flaky("/workers/filter", [httpx.Response(429, headers={"Retry-After": "0"})] * 10)
    async with httpx.AsyncClient(transport=flaky) as http:
        with pytest.raises(PrefectError) as err:
            await PrefectClient(http, seeder.api_url, attempts=3, backoff=0.01).observe_pool(pool_name, [], utcnow())
    assert err.value.reason == health.RATE_LIMITED and flaky.hits == 3


async def test_a_state_write_is_retried_only_when_it_cannot_have_been_applied(seeder: PrefectSeeder, pool_name: str) -> None:
    """503 (Prefect's retryable database errors) and 429 come before any run is changed: sent
    again. A 500/502/504 may come after: the write fails at once, never replayed."""
    seeder.create_ecs_pool(pool_name)
    runs = seeder.create_runs(seeder.create_deployment(pool_name), 1, {"type": "PENDING"})
    state = {"type": "SCHEDULED", "name": "Requeued"}
    retried = Flaky("/bulk_set_state", [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "0"})])
    async with httpx.AsyncClient(transport=retried) as http:
        results = await PrefectClient(http, seeder.api_url, backoff=0.01).bulk_set_pending_runs(runs, state)
    assert retried.hits == 2 and results == {runs[0]: "ACCEPT"}
    for code in (500, 502, 504):
        once = Flaky("/bulk_set_state", [httpx.Response(code)] * 4)
        async with httpx.AsyncClient(transport=once) as http:
            with pytest.raises(PrefectError) as err:
                await PrefectClient(http, seeder.api_url, backoff=0.01).bulk_set_pending_runs(runs, state)
        assert once.hits == 1 and err.value.reason == health.SERVER_ERROR and "not sent again" in err.value.message
