"""Stale-run recovery against a real Prefect server.

Time: PENDING timestamps are the server's; the recovery is handed a "now" that lies
``pendingTimeout`` after them (the operator takes its clock as an argument), so
tests need not sleep through real thresholds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from urllib.parse import urlsplit

import httpx
import pytest

from prefect_workpool_operator.core import health
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.pools import pool_scope
from prefect_workpool_operator.prefect.rest import PrefectError
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from sandbox.prefect_seed import PrefectSeeder, scheduled_state, utcnow
from sandbox.tcp_proxy import TcpProxy
from tests.support.recovery import Recorder, clock_after, pending_since, recover, states

pytestmark = pytest.mark.integration


@pytest.fixture
async def recorded(seeder: PrefectSeeder):
    recorder = Recorder()
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        yield PrefectClient(http, seeder.api_url), recorder


@pytest.fixture
def deployment(seeder: PrefectSeeder, pool_name: str) -> str:
    seeder.create_ecs_pool(pool_name)
    return seeder.create_deployment(pool_name)


async def test_stale_runs_are_requeued_and_workers_pick_them_up(
    seeder: PrefectSeeder, pool_name: str, deployment: str, recorded
) -> None:
    client, recorder = recorded
    old = seeder.create_runs(deployment, 5, {"type": "PENDING"})
    await asyncio.sleep(2)
    young = seeder.create_runs(deployment, 3, {"type": "PENDING"})
    now = clock_after(seeder, old, 31)  # old ones: stale at both observations (now - 1 s, now); young ones: not
    assert min(pending_since(seeder, young)) > now - dt.timedelta(seconds=30)

    mark = recorder.mark()
    outcome = await recover(client, pool_name, now)

    got = states(seeder, old + young)
    assert {got[i] for i in old} == {("SCHEDULED", "Requeued")}
    assert {got[i] for i in young} == {("PENDING", "Pending")}
    assert (outcome.condition.status, outcome.condition.reason) == ("True", "Recovered")
    assert outcome.figures["stale"] == 5 and outcome.figures["recovered"] == 5
    assert sorted(outcome.last_recovery["runIds"]) == sorted(old)
    # No claimer, no infrastructure: each is recoverable as ClaimerGone; none reached the cap.
    assert outcome.last_recovery["reasons"] == {"ClaimerGone": 5} and outcome.last_recovery["exhausted"] == 0
    assert len(Recorder.writes(recorder.since(mark))) == 1  # one bulk call for five runs
    message = seeder.read_run(old[0])["state"]["message"]
    assert "prefectops.dev policy ns/policy" in message

    # A worker asking for work gets them again.
    picked = seeder._json("POST", f"/work_pools/{pool_name}/get_scheduled_flow_runs",
                          json={"scheduled_before": (utcnow() + dt.timedelta(seconds=10)).isoformat()})
    assert set(old) <= {item["flow_run"]["id"] for item in picked}


async def test_requeue_cap_survives_an_operator_restart(
    seeder: PrefectSeeder, pool_name: str, deployment: str, recorded
) -> None:
    client, _ = recorded
    runs = seeder.create_runs(deployment, 3, {"type": "PENDING"})
    first = await recover(client, pool_name, clock_after(seeder, runs), maxRequeuesPerRun=1)
    assert first.figures["recovered"] == 3

    # A worker claims them again and dies again; the operator restarts (fresh memory).
    for run in runs:
        seeder.set_state(run, {"type": "PENDING"})
    for _ in range(60):  # Requeued events become visible a few seconds after the change
        if await client.requeue_counts(runs, utcnow() - dt.timedelta(days=1)) == {r: 1 for r in runs}:
            break
        await asyncio.sleep(0.5)
    else:
        pytest.fail("Requeued events never became visible")
    second = await recover(client, pool_name, clock_after(seeder, runs), memory=RecoveryMemory(), maxRequeuesPerRun=1)

    assert {s for s in states(seeder, runs).values()} == {("CRASHED", "Crashed")}
    assert second.condition.reason == "CapExhausted" and second.figures["exhausted"] == 3
    assert second.last_recovery["exhausted"] == 3 and second.last_recovery["crashed"] == 3
    # The restarted operator's total comes from Prefect's Requeued events, not from memory.
    assert first.figures["totalRecovered"] == 3 and second.figures["totalRecovered"] == 3


@pytest.mark.parametrize("mode", ["dryRun", "ReportOnly"])
async def test_dry_run_and_report_only_write_nothing(
    seeder: PrefectSeeder, pool_name: str, deployment: str, recorded, mode: str
) -> None:
    client, recorder = recorded
    runs = seeder.create_runs(deployment, 4, {"type": "PENDING"})
    mark = recorder.mark()
    if mode == "dryRun":
        outcome = await recover(client, pool_name, clock_after(seeder, runs), dry_run=True)
    else:
        outcome = await recover(client, pool_name, clock_after(seeder, runs), action="ReportOnly")
    assert Recorder.writes(recorder.since(mark)) == []
    assert {s for s in states(seeder, runs).values()} == {("PENDING", "Pending")}
    assert outcome.condition.reason == ("DryRun" if mode == "dryRun" else "ReportOnly")
    assert outcome.figures["wouldRecover"] == 4 and outcome.last_recovery is None


class NoBulkEndpoint(httpx.AsyncBaseTransport):
    """The real server, as an older one would look: no bulk_set_state (404)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/flow_runs/bulk_set_state"):
            return httpx.Response(404, json={"detail": "Not Found"})
        return await self.inner.handle_async_request(request)


async def test_fallback_when_the_bulk_endpoint_is_missing(seeder: PrefectSeeder, pool_name: str, deployment: str) -> None:
    runs = seeder.create_runs(deployment, 3, {"type": "PENDING"})
    moved = seeder.create_runs(deployment, 1, {"type": "PENDING"})
    recorder = Recorder()
    async with httpx.AsyncClient(transport=NoBulkEndpoint(), event_hooks={"request": [recorder]}) as http:
        client = PrefectClient(http, seeder.api_url)
        now = clock_after(seeder, runs + moved)
        seeder.set_state(moved[0], {"type": "RUNNING"})  # starts before the operator writes
        outcome = await recover(client, pool_name, now)
    assert outcome.figures["recovered"] == 3
    assert client.bulk_unsupported
    assert {states(seeder, runs)[r] for r in runs} == {("SCHEDULED", "Requeued")}
    assert states(seeder, moved)[moved[0]] == ("RUNNING", "Running")
    set_state_calls = [r for r in recorder.requests if r.url.path.endswith("/set_state")]
    assert len(set_state_calls) == 3  # one per run still PENDING, none for the one that moved on


async def test_ownership_decides(seeder: PrefectSeeder, pool_name: str, deployment: str, recorded) -> None:
    """Each group's claimer in a different state; the clock comes from all of these runs."""
    client, _ = recorded
    runs = seeder.create_runs(deployment, 14, {"type": "PENDING"})
    labelled, by_event, orphan, offline, restarted, stopped, pid_only = (runs[i:i + 2] for i in range(0, 14, 2))
    seeder.heartbeat_worker(pool_name, "alive", interval_seconds=30)
    seeder.heartbeat_worker(pool_name, "dying", interval_seconds=1)
    for name in ("restarting", "stopping"):
        seeder.heartbeat_worker(pool_name, name, interval_seconds=30)
    for run in labelled:
        seeder.label_run_as_worker(run, "alive", "ecs", pool_name)
    claims = ([seeder.submitted_event("alive", "ecs", r, pool_name) for r in by_event + pid_only]
              + [seeder.submitted_event("dying", "ecs", r, pool_name) for r in offline]
              + [seeder.submitted_event("restarting", "ecs", r, pool_name) for r in restarted]
              + [seeder.submitted_event("stopping", "ecs", r, pool_name) for r in stopped])
    seeder.emit_events(claims)
    for run in pid_only:  # a task was reported for it; nothing can check it (no spec.ecs)
        seeder._request("PATCH", f"/flow_runs/{run}", json={"infrastructure_pid": "prefect::arn:task/x"})
    # After the claims: a new process under the same name, and a clean stop.
    seeder.emit_events([seeder.worker_event("prefect.worker.started", "restarting", "ecs", pool_name),
                        seeder.worker_event("prefect.worker.stopped", "stopping", "ecs", pool_name)])
    seeder.heartbeat_worker(pool_name, "restarting", interval_seconds=30)  # ONLINE, but not the claimer
    seeder.wait_for(lambda: any(w["name"] == "dying" and w["status"] == "OFFLINE" for w in seeder.read_workers(pool_name)),
                    timeout=30)
    seeder.wait_for(lambda: len(seeder.read_events({"event": {"name": ["prefect.worker.submitted-flow-run",
                                                                       "prefect.worker.started", "prefect.worker.stopped"]},
                                                    "occurred": {"since": min(pending_since(seeder, runs)).isoformat()},
                                                    "any_resource": {"id_prefix": ["prefect.worker."]}},
                                                   limit=50)) >= len(claims) + 2, timeout=30)
    now = clock_after(seeder, runs)
    memory = RecoveryMemory()

    first = await recover(client, pool_name, now, memory=memory, observations=1)
    assert first.figures["recovered"] == 0  # one observation never acts
    assert first.figures["skipped"]["awaitingConfirmation"] == 8
    assert first.condition.reason == "AwaitingConfirmation"

    outcome = await recover(client, pool_name, now + dt.timedelta(seconds=1), memory=memory, observations=1)
    got = states(seeder, runs)
    assert {got[r] for r in labelled + by_event} == {("PENDING", "Pending")}  # same process online: hands off
    assert {got[r] for r in pid_only} == {("PENDING", "Pending")}  # claimer online, a task reported
    assert {got[r] for r in orphan + offline + restarted + stopped} == {("SCHEDULED", "Requeued")}
    assert outcome.figures["skipped"]["claimerAlive"] == 6
    # Each run's state message names its own reason.
    message = {r: seeder.read_run(r)["state"]["message"] for r in orphan + offline + restarted + stopped}
    assert all("no worker is known to have claimed it" in message[r] for r in orphan)
    assert all("'dying' is offline" in message[r] for r in offline)
    assert all("'restarting' restarted since the claim" in message[r] for r in restarted)
    assert all("'stopping' stopped since the claim" in message[r] for r in stopped)
    assert all("no live worker" not in m for m in message.values())

    # hardTimeout never overrides a live claimer on its own ...
    later = clock_after(seeder, labelled + by_event + pid_only, 3601)
    held = await recover(client, pool_name, later, hardTimeout="1h")
    assert held.figures["recovered"] == 0 and held.figures["skipped"]["claimerAlive"] == 6
    # ... only with the explicit opt-in, and then it warns of the double run.
    forced = await recover(client, pool_name, later, hardTimeout="1h", hardTimeoutOverridesLiveClaimer=True)
    assert forced.figures["recovered"] == 6
    assert forced.warning is not None and "may run twice" in forced.warning


async def test_candidates_survive_runs_leaving_pending_between_pages(
    seeder: PrefectSeeder, pool_name: str, deployment: str
) -> None:
    """Workers start runs while recovery pages through the candidates: the runs behind
    them shift to earlier offsets. Overlapping pages must not skip any of them."""
    runs = seeder.create_runs_bulk(deployment, 120, {"type": "PENDING"})
    started: list[str] = []

    async def start_ten_of_the_first_page(response: httpx.Response) -> None:
        if started or not response.request.url.path.endswith("/flow_runs/filter"):
            return
        await response.aread()
        started.extend(r["id"] for r in response.json()[:10])
        for run in started:
            seeder.set_state(run, {"type": "RUNNING"})

    async with httpx.AsyncClient(event_hooks={"response": [start_ten_of_the_first_page]}) as http:
        client = PrefectClient(http, seeder.api_url)
        found = await client.pending_candidates(pool_scope(pool_name, []), utcnow() + dt.timedelta(minutes=1), [],
                                                page_size=50)
    assert len(started) == 10
    assert set(runs) - set(started) <= {r["id"] for r in found}


async def test_candidates_sharing_one_expected_start_are_all_read_once(
    seeder: PrefectSeeder, pool_name: str, deployment: str, recorded
) -> None:
    """Pages go by expected start time; 130 runs due at the very same moment (one cron tick
    of many deployments) span pages of 50 and each is read once: three requests, no overlap."""
    client, recorder = recorded
    due = utcnow() - dt.timedelta(minutes=5)
    runs = seeder.create_runs_bulk(deployment, 130, scheduled_state(due))
    for i in range(0, len(runs), 50):  # claimed: PENDING, their expected start stays the scheduled time
        seeder._json("POST", "/flow_runs/bulk_set_state", json={
            "flow_runs": {"id": {"any_": runs[i : i + 50]}}, "state": {"type": "PENDING"}, "force": True, "limit": 50})
    assert {seeder.read_run(r)["expected_start_time"] for r in runs[:3]} == {seeder.read_run(runs[0])["expected_start_time"]}
    mark = recorder.mark()
    found = await client.pending_candidates(pool_scope(pool_name, []), utcnow(), [], page_size=50)
    assert sorted(r["id"] for r in found) == sorted(runs)
    assert len(recorder.since(mark)) == 3


async def test_a_guarded_write_that_timed_out_is_not_sent_again(
    seeder: PrefectSeeder, pool_name: str, deployment: str
) -> None:
    """A bulk write whose answer never came may still have been applied: sent again later,
    its PENDING guard could catch a run a worker had claimed anew meanwhile. So it fails
    the batch (the next cycle reads again) instead of being replayed; reads still retry."""
    runs = seeder.create_runs_bulk(deployment, 3, {"type": "PENDING"})
    host, port = urlsplit(seeder.api_url).hostname, urlsplit(seeder.api_url).port
    sent: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.url.path)

    with TcpProxy(host, port, delay=1.5) as proxy:  # type: ignore[arg-type]
        async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            client = PrefectClient(http, proxy.url("/api"), timeout=0.5, backoff=0.01)
            with pytest.raises(PrefectError) as err:
                await client.bulk_set_pending_runs(runs, {"type": "SCHEDULED", "name": "Requeued"})
            assert err.value.reason == health.UNREACHABLE
            assert sum(p.endswith("/bulk_set_state") for p in sent) == 1
            sent.clear()
            with pytest.raises(PrefectError):
                await client.read_workers(pool_name)
            assert len(sent) == 4  # a read is sent again (attempts=4)

