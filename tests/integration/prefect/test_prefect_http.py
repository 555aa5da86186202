"""The shared Prefect connection pool against a real Prefect server: it never wedges.

The operator of 2026-11-30 wedged when 200 policies' cycles queued hundreds of requests
in httpcore's pool (FACTS.md "A shared httpx client that wedges"). These tests drive far
more concurrent cycles than connections, with short timeouts, and check that nothing
ever waits in httpcore's queue, that the pool keeps working afterwards, that a pool
that stops handing out connections is replaced, and that a 429 holds back every
policy on that server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from prefect_workpool_operator.core import health
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.rest import PrefectError
from prefect_workpool_operator.prefect.http import PrefectHttp, budget_key
from sandbox.prefect_seed import PrefectSeeder, utcnow
from tests.integration.prefect.test_prefect_api import Flaky

pytestmark = pytest.mark.integration


async def test_a_burst_far_beyond_the_pool_never_queues_in_httpx_and_leaves_it_working(
    seeder: PrefectSeeder, pool_name: str
) -> None:
    seeder.create_ecs_pool(pool_name)
    http = PrefectHttp(max_connections=4)
    try:
        # 300 policies' cycles at once over 4 connections, with a timeout short enough that many
        # give up waiting: the situation that leaked every connection of the old shared client.
        clients = [PrefectClient(http, seeder.api_url, timeout=0.5, attempts=1) for _ in range(300)]
        results = await asyncio.gather(*(c.observe_pool(pool_name, [], utcnow()) for c in clients),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(f, PrefectError) and f.reason == health.UNREACHABLE for f in failures), failures[:3]
        assert len(failures) < len(results)  # the pool served requests throughout
        assert http.slot_timeouts > 0  # the burst did outlast its deadlines...
        assert http.pool_timeouts == 0  # ...but nobody waited in httpcore's pool: waits happen in our slots
        for _ in range(200):  # observe_pool's gather leaves siblings of a failed read running a moment
            if http.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        assert http.in_flight == 0 and http.replacements == 0
        # Afterwards every request goes through at once, on the same client.
        after = await asyncio.gather(*(PrefectClient(http, seeder.api_url, timeout=5, attempts=1)
                                       .observe_pool(pool_name, [], utcnow()) for _ in range(20)))
        assert all(o.pool_status for o in after)
    finally:
        await http.aclose()


async def test_a_pool_that_stopped_handing_out_connections_is_replaced(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    http = PrefectHttp(max_connections=1)
    wedged = http.client_for(seeder.api_url)
    # Hold the pool's only connection outside the operator's slots: to the pool it looks like
    # the leaked CONNECTING connections of httpcore issue 1093 (busy forever, no request).
    held = await wedged.send(wedged.build_request("GET", f"{seeder.api_url}/health"), stream=True)
    try:
        client = PrefectClient(http, seeder.api_url, timeout=0.3, attempts=4, backoff=0.01)
        pool = await client.read_work_pool(pool_name)
        assert pool["name"] == pool_name
        assert http.pool_timeouts == 3 and http.replacements == 1 and http.client_for(seeder.api_url) is not wedged
        for _ in range(200):  # the old client is closed in the background
            if wedged.is_closed:
                break
            await asyncio.sleep(0.05)
        assert wedged.is_closed
    finally:
        await held.aclose()
        await http.aclose()


async def test_a_pool_really_wedged_by_httpcore_is_replaced(seeder: PrefectSeeder, pool_name: str) -> None:
    """The wedge itself: requests queued in httpcore's pool (no slots in front of it) with
    keep-alive below the pool size, their pool waits expiring as new connections are
    handed over, leak every connection (httpcore issue 1093). The operator's pool must
    notice and replace its client."""
    seeder.create_ecs_pool(pool_name)
    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        # The first client as the operator of 2026-11-30 built it (keep-alive < max), the next ones as now.
        churn = 3 if not made else 8
        made.append(httpx.AsyncClient(limits=httpx.Limits(max_connections=8, max_keepalive_connections=churn)))
        return made[-1]

    http = PrefectHttp(max_connections=8, client_factory=factory)
    url = f"{seeder.api_url}/work_pools/{pool_name}"
    http.client_for(url)  # the server's first client: made[0]

    async def unbounded(client: httpx.AsyncClient) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await client.get(url, timeout=0.3)

    try:
        for _ in range(5):  # a race: a few bursts until the idle client answers PoolTimeout
            await asyncio.gather(*(unbounded(made[0]) for _ in range(1000)))
            try:
                await made[0].get(url, timeout=1)
            except httpx.PoolTimeout:
                break
        else:
            pytest.skip("this machine did not reproduce httpcore's pool leak")
        client = PrefectClient(http, seeder.api_url, timeout=0.5, attempts=5, backoff=0.01)
        assert (await client.read_work_pool(pool_name))["name"] == pool_name
        assert http.replacements == 1 and http.client_for(url) is made[1]
    finally:
        await http.aclose()
        await made[0].aclose()


async def test_a_429_holds_back_every_policy_on_that_server(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    flaky = Flaky("/workers/filter", [httpx.Response(429, headers={"Retry-After": "2"})])
    async with httpx.AsyncClient(transport=flaky) as raw:
        http = PrefectHttp(client=raw)
        first = PrefectClient(http, seeder.api_url, auth_header="Bearer policy-a")
        other = PrefectClient(http, seeder.api_url, auth_header="Bearer policy-b")
        rate_limited = asyncio.create_task(first.read_workers(pool_name))
        while flaky.hits == 0:  # until the first policy got its 429
            await asyncio.sleep(0.01)
        asked = time.monotonic()
        await other.read_work_pool(pool_name)  # another policy, another endpoint: it waits too
        waited = time.monotonic() - asked
        await rate_limited
    assert 1.5 <= waited < 10


def test_rate_limits_are_shared_per_server_or_cloud_account() -> None:
    cloud = "https://api.prefect.cloud/api/accounts/a1/workspaces/"
    assert budget_key(cloud + "w1/flow_runs/count") == budget_key(cloud + "w2/work_pools/p")
    assert budget_key(cloud + "w1") != budget_key("https://api.prefect.cloud/api/accounts/a2/workspaces/w1")
    assert budget_key("http://user:pw@prefect:4200/api/health") == "http://prefect:4200"
    assert budget_key("http://prefect:4200/api") != budget_key("http://other:4200/api")


async def test_every_server_has_its_own_pool_but_one_tls_context() -> None:
    """A client per server (noisy neighbours) must not load the CA bundle once per server."""
    http = PrefectHttp(max_connections=3)
    try:
        a, b = http.client_for("https://a.example/api"), http.client_for("https://b.example/api/x")
        assert a is not b and a is http.client_for("https://a.example/api/flow_runs/filter")
        contexts = {id(c._transport._pool._ssl_context) for c in (a, b)}  # noqa: SLF001 - httpx keeps it there
        assert len(contexts) == 1
    finally:
        await http.aclose()
