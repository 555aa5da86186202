"""Claims read when a run is first seen recoverable, not again in the acting cycle (core.claim_memory),
except where the claim's "task reported" flag decides (no ECS check answers): then read again.

Requests counted with an httpx event hook on the operator's own client, as in
test_recovery_requests.py; claims come from simulated workers' events on a real server,
ECS answers from moto.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter

import httpx
import pytest

from prefect_workpool_operator.aws import AwsClient, AwsCredentials, EcsInfrastructureCheck
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from sandbox.prefect_seed import PrefectSeeder
from tests.support.ecs_sandbox import REGION, EcsSandbox
from tests.support.recovery import NoSecrets, Recorder, clock_after, recover, states
from tests.integration.cycle.test_recovery_requests import policy

pytestmark = pytest.mark.integration

SUBMITTED = "prefect.worker.submitted-flow-run"
EXECUTED = "prefect.worker.executed-flow-run"


@pytest.fixture
async def recorded(seeder: PrefectSeeder):
    recorder = Recorder()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        yield PrefectClient(http, seeder.api_url), recorder


def emit_visible(seeder: PrefectSeeder, events: list[dict], name: str, runs: list[str]) -> None:
    """Emit events named ``name`` about ``runs``; return once the server lists every one."""
    seeder.emit_events(events)
    body = {"filter": {"event": {"name": [name]}, "related": {"id": [f"prefect.flow-run.{r}" for r in runs]}},
            "limit": 1}
    seeder.wait_for(lambda: seeder._json("POST", "/events/filter", json=body)["total"] >= len(runs), timeout=30)


def claimed(seeder: PrefectSeeder, worker: str, runs: list[str], pool: str) -> None:
    """Simulated claims by ``worker`` (which never heartbeats: offline), visible before returning."""
    emit_visible(seeder, [seeder.submitted_event(worker, "ecs", r, pool) for r in runs], SUBMITTED, runs)


def claimed_runs(seeder: PrefectSeeder, pool: str, count: int) -> list[str]:
    """An ECS pool with ``count`` PENDING runs claimed by a worker that is gone."""
    seeder.create_ecs_pool(pool)
    runs = seeder.create_runs(seeder.create_deployment(pool), count, {"type": "PENDING"})
    claimed(seeder, "gone", runs, pool)
    return runs


def claim_reads(requests: list[httpx.Request]) -> list[list[str]]:
    """The run ids of each claims query sent."""
    return [sorted(i.removeprefix("prefect.flow-run.") for i in json.loads(r.content)["filter"]["related"]["id"])
            for r in requests if r.url.path.endswith("/events/filter") and SUBMITTED in r.content.decode()]


def summary(requests: list[httpx.Request]) -> str:
    return ", ".join(f"{n}× {k}" for k, n in Counter(f"{r.method} {r.url.path.split('/api', 1)[1]}" for r in requests).items())


@pytest.fixture
def ecs_check(sandbox: EcsSandbox, moto):
    aws = AwsClient(REGION, endpoint_url=moto.endpoint_url, credentials=AwsCredentials("testing", "testing"))
    yield EcsInfrastructureCheck(aws, sandbox.cluster())
    aws.close()


@pytest.mark.parametrize("checked", [True, False], ids=["ecs-check", "no-ecs-check"])
async def test_the_acting_cycle_reads_no_claim_found_at_the_first_reading_where_ecs_answers(
    seeder: PrefectSeeder, pool_name: str, recorded, request, checked: bool
) -> None:
    client, recorder = recorded
    check = request.getfixturevalue("ecs_check") if checked else None
    runs = claimed_runs(seeder, pool_name, 60)
    now = clock_after(seeder, runs)
    memory = RecoveryMemory()
    first = await recover(client, pool_name, now - dt.timedelta(seconds=1), memory=memory, observations=1,
                          infrastructure_check=check)
    assert first.figures["skipped"]["awaitingConfirmation"] == 60
    assert sorted(i for ids in claim_reads(recorder.requests) for i in ids) == sorted(runs)  # read at the first reading
    mark = recorder.mark()
    second = await recover(client, pool_name, now, memory=memory, observations=1, infrastructure_check=check)
    acting = recorder.since(mark)
    print(f"\nacting cycle, 60 stale runs, {request.node.callspec.id}: {len(acting)} requests: {summary(acting)}")
    assert second.figures["recovered"] == 60
    assert not [r for r in acting if r.url.path.endswith("/events/count-by/resource")]  # requeue counts kept too
    # Workers read afresh (liveness never cached), the listing, the claimer's lifecycle, 2 writes of ≤ 50;
    # without an ECS check the "task reported" flag decides, so the claims are read again (one query).
    assert claim_reads(acting) == ([] if checked else [sorted(runs)])
    assert len(Recorder.writes(acting)) == 2
    assert [r.url.path.split("/api", 1)[1] for r in acting if r not in Recorder.writes(acting)] == [
        f"/work_pools/{pool_name}/workers/filter", "/flow_runs/filter", "/events/filter"] + (
        [] if checked else ["/events/filter", "/events/filter/next"])  # 60 claims: two pages of events
    assert set(states(seeder, runs).values()) == {("SCHEDULED", "Requeued")}


async def test_a_task_reported_between_readings_holds_the_run_without_an_ecs_check(
    seeder: PrefectSeeder, pool_name: str, recorded
) -> None:
    """The claim was remembered without a task; the worker reports one before the acting cycle."""
    client, _ = recorded
    runs = claimed_runs(seeder, pool_name, 2)
    now = clock_after(seeder, runs)
    memory = RecoveryMemory()
    first = await recover(client, pool_name, now - dt.timedelta(seconds=1), memory=memory, observations=1)
    assert first.figures["skipped"]["awaitingConfirmation"] == 2
    reported, other = runs
    executed = seeder.submitted_event("gone", "ecs", reported, pool_name)
    executed["event"] = EXECUTED
    executed["id"] = str(uuid.uuid4())
    emit_visible(seeder, [executed], EXECUTED, [reported])

    second = await recover(client, pool_name, now, memory=memory, observations=1)

    assert second.figures["recovered"] == 1
    assert states(seeder, [other])[other] == ("SCHEDULED", "Requeued")
    assert states(seeder, [reported])[reported][0] == "PENDING"  # held: a task was reported, nothing verifies it


async def test_a_run_reclaimed_between_readings_is_read_again_and_not_acted_on(
    seeder: PrefectSeeder, pool_name: str, recorded
) -> None:
    client, recorder = recorded
    runs = claimed_runs(seeder, pool_name, 3)
    memory = RecoveryMemory()
    await recover(client, pool_name, clock_after(seeder, runs), memory=memory, observations=1)
    reclaimed, others = runs[0], runs[1:]
    before = seeder.read_run(reclaimed)["state"]["id"]
    seeder.set_state(reclaimed, {"type": "SCHEDULED"})
    seeder.set_state(reclaimed, {"type": "PENDING", "name": "Submitting"})  # another worker's claim: a new state
    after = seeder.read_run(reclaimed)["state"]["id"]
    assert after != before
    claimed(seeder, "gone-too", [reclaimed], pool_name)
    mark = recorder.mark()
    second = await recover(client, pool_name, clock_after(seeder, [reclaimed]), memory=memory, observations=1)

    # The new state's claim; the others' again too: no ECS check answers, so their "task reported" flag decides.
    assert claim_reads(recorder.since(mark)) == [[reclaimed], sorted(others)]
    assert second.figures["recovered"] == 2 and second.figures["skipped"]["awaitingConfirmation"] == 1
    assert seeder.read_run(reclaimed)["state"]["id"] == after  # seen once in its new state: untouched
    assert set(states(seeder, others).values()) == {("SCHEDULED", "Requeued")}


def count_reads(requests: list[httpx.Request]) -> list[list[str]]:
    """The run ids of each requeue-count query sent."""
    return [sorted(i.removeprefix("prefect.flow-run.") for i in json.loads(r.content)["filter"]["resource"]["id"])
            for r in requests if r.url.path.endswith("/events/count-by/resource")]


async def test_the_observing_cycle_reads_each_capped_run_once_and_nothing_beyond_the_cap(
    seeder: PrefectSeeder, pool_name: str
) -> None:
    """A whole cycle (run_cycle) with 60 claimed stale runs and maxRunsPerCycle 20: claims and
    requeue counts are read once each, for the 20 oldest only; workers and the claimer's
    started/stopped events once."""
    runs = claimed_runs(seeder, pool_name, 60)
    since = {r["id"]: r["state"]["timestamp"] for r in seeder.filter_runs({"flow_runs": {"id": {"any_": runs}}})}
    oldest = sorted(runs, key=lambda r: dt.datetime.fromisoformat(since[r]))[:20]
    recorder = Recorder()
    body = policy(seeder.api_url, pool_name, maxRunsPerCycle=20)
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        outcome = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=PolicyRuntime(),
                                  now=clock_after(seeder, runs))
    sent = recorder.requests
    print(f"\nobserving cycle, 60 stale runs, cap 20: {len(sent)} requests: {summary(sent)}")
    assert outcome.status["staleRuns"]["skipped"]["awaitingConfirmation"] == 20
    assert claim_reads(sent) == [sorted(oldest)]  # once each, none beyond the cap
    assert count_reads(sent) == [sorted(oldest)]
    paths = Counter(r.url.path.split("/api", 1)[1] for r in sent)
    assert paths[f"/work_pools/{pool_name}/workers/filter"] == 1
    lifecycle = [r for r in sent if r.url.path.endswith("/events/filter") and b"prefect.worker.started" in r.content]
    assert len(lifecycle) == 1
    assert Recorder.writes(sent) == []
