"""Recovery racing a live worker, on a real Prefect server.

A live worker heartbeats, has announced its claims (prefect.worker.submitted-flow-run,
as real workers do) and starts some of its stale runs while recovery runs. None of its
runs may be requeued — in particular none that went RUNNING. The runs of a worker that
went OFFLINE are all recovered in the same cycle.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from prefect_workpool_operator.prefect.client import PrefectClient
from sandbox.prefect_seed import PrefectSeeder
from tests.support.recovery import Recorder, clock_after, recover, states

pytestmark = pytest.mark.integration

LIVE_RUNS, DEAD_RUNS, STARTED = 200, 200, 100


def _live_worker(seeder: PrefectSeeder, pool: str, runs: list[str], started: list[str], stop: threading.Event) -> None:
    for i, run in enumerate(runs[:STARTED]):
        if stop.is_set():
            break
        if i % 20 == 0:
            seeder.heartbeat_worker(pool, "live", interval_seconds=30)
        seeder.set_state(run, {"type": "RUNNING"}, force=False)
        started.append(run)


async def test_live_worker_runs_are_never_requeued_offline_worker_runs_are(
    seeder: PrefectSeeder, pool_name: str
) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.heartbeat_worker(pool_name, "live", interval_seconds=30)
    seeder.heartbeat_worker(pool_name, "dead", interval_seconds=1)
    live = seeder.create_runs_bulk(deployment, LIVE_RUNS, {"type": "PENDING"})
    dead = seeder.create_runs_bulk(deployment, DEAD_RUNS, {"type": "PENDING"})
    seeder.emit_events([seeder.submitted_event("live", "ecs", r, pool_name) for r in live]
                       + [seeder.submitted_event("dead", "ecs", r, pool_name) for r in dead])
    seeder.wait_for(lambda: any(w["name"] == "dead" and w["status"] == "OFFLINE" for w in seeder.read_workers(pool_name)),
                    timeout=30)
    total = {"event": {"name": ["prefect.worker.submitted-flow-run"]},
             "related": {"id": [f"prefect.flow-run.{r}" for r in live[:1] + dead[-1:]]}}
    seeder.wait_for(lambda: len(seeder.read_events(total)) == 2, timeout=30)
    now = clock_after(seeder, live + dead)

    started: list[str] = []
    stop = threading.Event()
    worker = threading.Thread(target=_live_worker, args=(PrefectSeeder(seeder.api_url), pool_name, live, started, stop))
    recorder = Recorder()
    t0 = time.monotonic()
    outcomes = []
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        client = PrefectClient(http, seeder.api_url)
        worker.start()
        # Two cycles, as the operator would run them: the second retries any write the
        # server aborted (SQLite "database is locked" inside bulk_set_state).
        for _ in range(2):
            outcomes.append(await recover(client, pool_name, now, maxRunsPerCycle=1000))
    elapsed = time.monotonic() - t0
    worker.join(timeout=120)
    stop.set()

    got = states(seeder, live + dead)
    live_requeued = [r for r in live if got[r][1] == "Requeued"]
    started_then_requeued = [r for r in started if got[r][0] == "SCHEDULED"]
    dead_requeued = [r for r in dead if got[r] == ("SCHEDULED", "Requeued")]
    writes = Recorder.writes(recorder.requests)
    print(f"\nrace: {LIVE_RUNS} live-claimer runs ({len(started)} started RUNNING during 2 cycles), "
          f"{DEAD_RUNS} offline-claimer runs; recovery took {elapsed:.1f}s, {len(recorder.requests)} requests "
          f"({len(writes)} writes); requeued: live {len(live_requeued)}, started-then-requeued "
          f"{len(started_then_requeued)}, offline {len(dead_requeued)}/{DEAD_RUNS}")

    assert started, "the live worker should have started runs during recovery"
    assert started_then_requeued == [] and live_requeued == []
    assert len(dead_requeued) == DEAD_RUNS
    # The live worker's runs still PENDING were left alone as ClaimerAlive (offset paging
    # can miss a run that left PENDING between pages: it is read again next cycle).
    first = outcomes[0].figures
    assert LIVE_RUNS - STARTED <= first["skipped"]["claimerAlive"] <= LIVE_RUNS
    assert {k for k, n in first["skipped"].items() if n} <= {"claimerAlive", "awaitingConfirmation", "movedOn"}
    assert sum(o.figures["recovered"] for o in outcomes) == DEAD_RUNS
    assert len(writes) <= DEAD_RUNS // 50 + 1
