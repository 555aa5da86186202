"""HTTP requests per cycle, counted with an httpx event hook on the operator's own client.

Targets (issue 3): steady state with nothing stale ≤ 6 small reads and 0 writes;
500 stale runs among 1,000 PENDING (5,000: bench/recovery_fleet.py) recovered with ≤ 10 writes plus paginated reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter

import httpx
import pytest

from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
from sandbox.prefect_seed import PrefectSeeder, utcnow
from sandbox.prefect_server import PrefectServer
from tests.support.recovery import NoSecrets, Recorder, clock_after, pending_since

pytestmark = pytest.mark.integration


def policy(api_url: str, pool: str, **stale_runs: object) -> dict:
    return {
        "metadata": {"name": "counted", "namespace": "ns", "generation": 1},
        "spec": {"prefect": {"apiUrl": api_url, "workPool": pool}, "staleRuns": {"pendingTimeout": "30s", **stale_runs}},
        "status": {},
    }


def summary(requests: list[httpx.Request]) -> str:
    return ", ".join(f"{n}× {k}" for k, n in Counter(f"{r.method} {r.url.path.split('/api', 1)[1]}" for r in requests).items())


async def test_steady_state_reads_six_and_writes_nothing(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.create_runs(deployment, 5, {"type": "PENDING"})  # young: not stale
    recorder = Recorder()
    runtime = PolicyRuntime()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        body = policy(seeder.api_url, pool_name)
        first = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
        mark = recorder.mark()
        body["status"] = first.status
        second = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
    steady = recorder.since(mark)
    print(f"\nsteady cycle: {len(steady)} requests: {summary(steady)}")
    assert second.status["staleRuns"]["stale"] == 0
    assert len(steady) <= 6 and Recorder.writes(steady) == []


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory: pytest.TempPathFactory):
    """A server without background services: creating runs on SQLite is then ~4x faster.
    Nothing here needs them (no workers, no Late runs, no claims to find)."""
    services = {"LATE_RUNS": False, "FOREMAN": False, "EVENT_PERSISTER": False}
    with PrefectServer(tmp_path_factory.mktemp("prefect-quiet"), services=services) as server:
        yield server


async def test_500_stale_among_1000_pending(quiet_server: PrefectServer, pool_name: str) -> None:
    """Requests, not speed: 500 stale runs cost ≤ 10 guarded bulk writes, the young ones none.
    The same at 5,000 PENDING (on PostgreSQL, with figures) is bench/recovery_fleet.py's first
    case; here 500 young runs (creating 4,500 more on SQLite took ≈ 6 of make test's minutes)."""
    seeder = PrefectSeeder(quiet_server.api_url)
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    t0 = time.monotonic()
    stale_ids = seeder.create_runs_bulk(deployment, 500, {"type": "PENDING"})
    await asyncio.sleep(11)  # young ones stay under the threshold through both observations
    young_ids = seeder.create_runs_bulk(deployment, 500, {"type": "PENDING"})
    print(f"\ncreated 1000 PENDING runs in {time.monotonic() - t0:.0f}s")
    now = clock_after(seeder, stale_ids, 30)
    later = now + dt.timedelta(seconds=10)  # the policy's interval
    assert min(pending_since(seeder, young_ids[:200])) > later - dt.timedelta(seconds=30)

    recorder = Recorder()
    runtime = PolicyRuntime()
    body = policy(seeder.api_url, pool_name, maxRunsPerCycle=500)
    body["spec"]["interval"] = "10s"
    # What is counted here is requests, not their speed: on SQLite with many PENDING runs one
    # guarded bulk write of 50 can outlast the default 10 s (seen: ReadTimeout, no figures).
    body["spec"]["prefect"]["requestTimeout"] = "2m"
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        started = time.monotonic()
        first = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=now)
        assert first.status["staleRuns"]["skipped"]["awaitingConfirmation"] == 500  # seen once: no write
        outcome = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=later)
        took = time.monotonic() - started
    writes = Recorder.writes(recorder.requests)
    reads = [r for r in recorder.requests if r not in writes]
    figures = outcome.status["staleRuns"]
    print(f"500 stale of 1000 PENDING: two cycles took {took:.1f}s, {len(writes)} writes, {len(reads)} reads "
          f"({summary(reads)}); figures {figures}")
    assert figures["stale"] == 500
    # A few bulk results may be aborted by SQLite's lock; they are retried next cycle.
    assert figures["recovered"] + figures["skipped"]["movedOn"] >= 495
    # ≤ 10 guarded bulk writes of ≤ 50 runs; a write retried after SQLite's lock (503) sends
    # the same body again, which is one write, not two.
    assert len({(r.method, r.url.path, r.content) for r in writes}) <= 10


async def test_idle_policy_lists_no_runs_when_none_is_pending(seeder: PrefectSeeder, pool_name: str) -> None:
    """The cycle's own PENDING count (observe_pool) is 0: recovery has nothing to list."""
    seeder.create_ecs_pool(pool_name)
    recorder = Recorder()
    runtime = PolicyRuntime()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        body = policy(seeder.api_url, pool_name)
        first = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
        mark = recorder.mark()
        body["status"] = first.status
        second = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
        seeder.create_runs(seeder.create_deployment(pool_name), 1, {"type": "PENDING"})
        third_mark = recorder.mark()
        body["status"] = second.status
        await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
    idle = recorder.since(mark)[: third_mark - mark]
    print(f"\nidle cycle: {len(idle)} requests ({len(idle) * 2} per minute at 30 s): {summary(idle)}")
    assert second.status["staleRuns"]["stale"] == 0
    assert len(idle) <= 5 and not [r for r in idle if r.url.path.endswith("/flow_runs/filter")]
    # A PENDING run counted: listed again the next cycle.
    assert [r for r in recorder.since(third_mark) if r.url.path.endswith("/flow_runs/filter")]
