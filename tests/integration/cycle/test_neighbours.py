"""Noisy neighbours: a Prefect server that never answers must not starve policies on a healthy one.

One operator serves several Prefect servers / Cloud accounts. The "slow Prefect" here is a
loopback proxy (hack/sandbox/tcp_proxy.py) in front of the real server that holds every
request for an hour: its requests are in flight, holding their connection slots, and its
cycles hold their turns, for as long as the test runs. Policies on the real server must
meanwhile get turns and connections at once and end Ready=True. Each step waits for its
condition (the slow requests known to be in flight, their slots all held), never a time.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest

from prefect_workpool_operator.core import health
from prefect_workpool_operator.fleet.keyed_turns import KeyedTurns, cycle_key
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.http import PrefectHttp
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
from sandbox.prefect_seed import PrefectSeeder, utcnow
from sandbox.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

NEVER = 3600.0  # the slow server's answer delay: longer than the test
GUARD = 45.0  # only so that a starved policy fails the test instead of hanging it (a cycle here takes < 1 s)


async def _until(condition: Any, what: str) -> None:
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _slow_proxy(seeder: PrefectSeeder) -> TcpProxy:
    parts = urlsplit(seeder.api_url)
    return TcpProxy(parts.hostname or "127.0.0.1", parts.port or 80, delay=NEVER)


async def test_a_server_that_never_answers_holds_only_its_own_connections(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    http = PrefectHttp(max_connections=2)
    with _slow_proxy(seeder) as proxy:
        slow = PrefectClient(http, proxy.url("/api"), timeout=120, attempts=1)
        stuck = [asyncio.ensure_future(slow.read_work_pool(pool_name)) for _ in range(4)]
        try:
            await _until(lambda: http.in_flight == 2 and proxy.accepted == 2, "the slow server's slots all held")
            healthy = PrefectClient(http, seeder.api_url, timeout=2, attempts=1)
            # All connections of the slow server are busy, none of the healthy one's: answered at once.
            pools = await asyncio.gather(*(healthy.read_work_pool(pool_name) for _ in range(6)))
            assert {p["name"] for p in pools} == {pool_name}
            assert http.slot_timeouts == 0
            assert http.in_flight == 2 and not any(t.done() for t in stuck)  # still held throughout
        finally:
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
            await http.aclose()


def _policy(api_url: str, pool: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "neighbours", "name": name, "generation": 1, "uid": name,
                         "creationTimestamp": "2026-11-30T00:00:00Z"},
            "spec": {"prefect": {"apiUrl": api_url, "workPool": pool, "requestTimeout": "2m"}}}


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == health.READY)


async def test_cycles_on_a_healthy_server_run_while_a_slow_one_holds_all_its_turns_and_connections(
    seeder: PrefectSeeder, pool_name: str
) -> None:
    """As the handler runs cycles: a turn of the policy's server (``KeyedTurns.of(cycle_key)``),
    then ``run_cycle`` over the shared ``PrefectHttp``."""
    seeder.create_ecs_pool(pool_name)
    http = PrefectHttp(max_connections=2)
    turns = KeyedTurns(per_key=2, total=3)

    async def cycle(body: dict[str, Any], scheduled: bool) -> dict[str, Any]:
        mine = turns.of(cycle_key(body["spec"]), cold=not scheduled)  # a policy's first cycle is cold
        await mine.take()
        try:
            outcome = await run_cycle(body, http=http, secrets=None, runtime=PolicyRuntime(), now=utcnow())  # type: ignore[arg-type]
        finally:
            mine.release()
        return outcome.status

    with _slow_proxy(seeder) as proxy:
        # More slow policies than turns: their scheduled cycles fill their server's turns and wait for more.
        slow = [asyncio.ensure_future(cycle(_policy(proxy.url("/api"), pool_name, f"slow-{i}"), True)) for i in range(6)]
        try:
            await _until(lambda: http.in_flight == 2 and proxy.accepted >= 2, "the slow server's slots all held")
            healthy = [_policy(seeder.api_url, pool_name, f"healthy-{i}") for i in range(5)]
            # First cycles on the healthy server, behind the slow server's waiting scheduled ones.
            statuses = await asyncio.wait_for(asyncio.gather(*(cycle(b, False) for b in healthy)), GUARD)
            assert [_ready(s)["status"] for s in statuses] == ["True"] * 5, [_ready(s) for s in statuses]
            assert http.slot_timeouts == 0
            # The slow server's cycles were in flight all along (none has ended, its slots still held).
            assert not any(t.done() for t in slow) and http.in_flight == 2
            # And a scheduled healthy cycle starts at once again while they are.
            again = await asyncio.wait_for(cycle(healthy[0], True), GUARD)
            assert _ready(again)["status"] == "True"
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            await http.aclose()
