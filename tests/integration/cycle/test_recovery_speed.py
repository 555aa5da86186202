"""Recovery's speed-ups against a real Prefect server, still guarded.

- the guarded bulk writes go out several at a time (bounded), and a run that left
  PENDING just before its batch was sent is still never touched;
- the per-cycle cap comes before the per-run reads: runs beyond it are not looked up;
- a quiet cycle (nothing can be stale yet) lists only the PENDING runs it has not seen,
  and lists in full again once a remembered run could be stale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import httpx
import pytest

from prefect_workpool_operator.cycle import act_recovery as recovery  # recovery's writes and their bound
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.http import PrefectHttp
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from sandbox.prefect_seed import PrefectSeeder, scheduled_state, utcnow
from tests.support.recovery import Recorder, clock_after, pending_since, recover, states

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(seeder: PrefectSeeder, pool_name: str) -> str:
    seeder.create_ecs_pool(pool_name)
    return seeder.create_deployment(pool_name)


def bodies(requests: list[httpx.Request], path: str) -> list[dict]:
    return [json.loads(r.content) for r in requests if r.url.path.endswith(path)]


async def test_concurrent_batches_never_touch_a_run_that_moved_on(
    seeder: PrefectSeeder, pool_name: str, deployment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = seeder.create_runs_bulk(deployment, 160, {"type": "PENDING"})  # four batches of ≤ 50
    now = clock_after(seeder, runs, 31)
    moved: list[str] = []
    in_flight = peak = 0
    real = PrefectClient.bulk_set_pending_runs

    async def racing(self: PrefectClient, run_ids: list[str], state: dict) -> dict | None:
        # A worker starts one run of the batch just before the write is sent (a real state change).
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.to_thread(seeder.set_state, run_ids[-1], {"type": "RUNNING"}, False)
        moved.append(run_ids[-1])
        try:
            return await real(self, run_ids, state)
        finally:
            in_flight -= 1

    monkeypatch.setattr(PrefectClient, "bulk_set_pending_runs", racing)
    recorder = Recorder()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        outcome = await recover(PrefectClient(http, seeder.api_url), pool_name, now, online=frozenset(),
                                maxRunsPerCycle=500)
    got = states(seeder, runs)
    assert len(moved) == 4
    assert 1 < peak <= recovery.WRITE_CONCURRENCY  # concurrent, and bounded
    assert {got[i] for i in moved} == {("RUNNING", "Running")}  # the guard held under concurrency
    assert {got[i] for i in runs if i not in moved} == {("SCHEDULED", "Requeued")}
    assert outcome.figures["recovered"] == 156 and outcome.figures["skipped"]["movedOn"] == 4
    assert len(bodies(recorder.requests, "/bulk_set_state")) == 4
    assert all(b["force"] is False and b["flow_runs"]["state"] == {"type": {"any_": ["PENDING"]}}
               for b in bodies(recorder.requests, "/bulk_set_state"))


async def test_runs_beyond_the_cap_are_not_looked_up(seeder: PrefectSeeder, pool_name: str, deployment: str) -> None:
    runs = seeder.create_runs(deployment, 8, {"type": "PENDING"})
    now = clock_after(seeder, runs, 31)
    recorder = Recorder()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        client = PrefectClient(http, seeder.api_url)
        memory = RecoveryMemory()
        outcome = await recover(client, pool_name, now, memory=memory, online=frozenset(), maxRunsPerCycle=3)
    looked_up = {r.removeprefix("prefect.flow-run.")
                 for b in bodies(recorder.requests, "/events/filter") for r in b["filter"].get("related", {}).get("id", [])}
    assert len(looked_up) == 3 and looked_up <= set(runs)
    assert outcome.figures["recovered"] == 3 and outcome.figures["skipped"]["batchLimit"] == 5
    assert sum(1 for s in states(seeder, runs).values() if s == ("SCHEDULED", "Requeued")) == 3


async def test_quiet_cycles_list_only_new_pending_runs(seeder: PrefectSeeder, pool_name: str, deployment: str) -> None:
    first = seeder.create_runs(deployment, 5, {"type": "PENDING"})
    start = clock_after(seeder, first, 0)
    recorder = Recorder()
    memory = RecoveryMemory()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        client = PrefectClient(http, seeder.api_url)

        async def cycle(now: dt.datetime):
            mark = recorder.mark()
            outcome = await recover(client, pool_name, now, memory=memory, online=frozenset(), observations=1,
                                    interval=dt.timedelta(seconds=10))
            return outcome, bodies(recorder.since(mark), "/flow_runs/filter")

        outcome, listed = await cycle(start)  # a full listing: nothing remembered yet
        assert outcome.figures["stale"] == 0 and "expected_start_time" in listed[0]["flow_runs"]
        await asyncio.sleep(2)  # so that the late run is not stale when the first ones are
        late = seeder.create_runs(deployment, 1, {"type": "PENDING"})
        # Quiet: every PENDING run not remembered (here all: they were due too recently to be candidates).
        outcome, listed = await cycle(start + dt.timedelta(seconds=10))
        assert len(listed) == 1 and "expected_start_time" not in listed[0]["flow_runs"]
        assert set(memory.quiet.pending) == {*first, *late} and outcome.figures["stale"] == 0
        outcome, listed = await cycle(start + dt.timedelta(seconds=20))
        assert len(listed) == 1 and sorted(listed[0]["flow_runs"]["id"]["not_any_"]) == sorted([*first, *late])
        # Once a remembered run could be stale, the full listing again: it finds them.
        outcome, listed = await cycle(clock_after(seeder, first, 31))
        assert "expected_start_time" in listed[0]["flow_runs"] and "id" not in listed[0]["flow_runs"]
        assert outcome.figures["stale"] == 5 and outcome.figures["skipped"]["awaitingConfirmation"] == 5


async def test_write_slots_are_shared_by_every_policy_on_a_server(
    seeder: PrefectSeeder, pool_name: str, deployment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two policies recovering on one server at once: their guarded batches together stay
    within the server's write slots (prefect_http.WRITE_CONCURRENCY), not that many each."""
    runs = [r for tag in ("a", "b") for r in seeder.create_runs_bulk(deployment, 200, {"type": "PENDING"}, tags=[tag])]
    now = clock_after(seeder, runs, 31)
    in_flight = peak = 0
    real = PrefectClient.bulk_set_pending_runs

    async def counted(self: PrefectClient, run_ids: list[str], state: dict) -> dict | None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)  # let every batch that may start, start
            return await real(self, run_ids, state)
        finally:
            in_flight -= 1

    monkeypatch.setattr(PrefectClient, "bulk_set_pending_runs", counted)
    async with httpx.AsyncClient() as raw:
        shared = PrefectHttp(client=raw)
        outcomes = await asyncio.gather(*(
            recover(PrefectClient(shared, seeder.api_url), pool_name, now, online=frozenset(), maxRunsPerCycle=200,
                    tags=[tag]) for tag in ("a", "b")))
    assert peak == recovery.WRITE_CONCURRENCY
    assert sum(o.figures["recovered"] for o in outcomes) == 400


async def test_stale_runs_among_many_fresh_ones_list_only_the_stale(
    seeder: PrefectSeeder, pool_name: str, deployment: str
) -> None:
    """Runs due long ago but PENDING for seconds (a backlog being claimed) beside stale ones:
    after the first listing, a cycle leaves the fresh ones out by id and lists the stale."""
    stale_runs = seeder.create_runs(deployment, 3, {"type": "PENDING"})
    await asyncio.sleep(2)
    fresh = seeder.create_runs_bulk(deployment, 40, scheduled_state(utcnow() - dt.timedelta(hours=2)))
    for i in range(0, len(fresh), 50):  # claimed now: PENDING for seconds, due two hours ago
        seeder._json("POST", "/flow_runs/bulk_set_state", json={
            "flow_runs": {"id": {"any_": fresh[i : i + 50]}}, "state": {"type": "PENDING"}, "force": True, "limit": 50})
    now = clock_after(seeder, stale_runs, 31)
    assert min(pending_since(seeder, fresh)) > now - dt.timedelta(seconds=30)
    recorder = Recorder()
    memory = RecoveryMemory()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        client = PrefectClient(http, seeder.api_url)
        first = await recover(client, pool_name, now - dt.timedelta(seconds=1), memory=memory, online=frozenset(),
                              observations=1)
        mark = recorder.mark()
        second = await recover(client, pool_name, now, memory=memory, online=frozenset(), observations=1)
    listed = bodies(recorder.since(mark), "/flow_runs/filter")
    assert first.figures["stale"] == 3 and second.figures["stale"] == 3 and second.figures["recovered"] == 3
    assert len(listed) == 1 and sorted(listed[0]["flow_runs"]["id"]["not_any_"]) == sorted(fresh)
    assert {states(seeder, stale_runs)[r] for r in stale_runs} == {("SCHEDULED", "Requeued")}
