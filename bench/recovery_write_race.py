"""Benchmark: which write narrows the race window more — bulk_set_state with a PENDING
guard, or re-read + set_state per run? (issue 3 asks to measure both and pick.)

Ownership is switched off here on purpose (no claims known, no workers), so every stale
run is written and only the write method stands between a run that just started and
a requeue. A thread plays the worker: it moves STARTED of the runs to RUNNING while
the writes go on. Prints, per method: runs reset from RUNNING to SCHEDULED, requests,
seconds. Run with `make bench` (a real Prefect server on SQLite; numbers vary).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import tempfile
import threading
import time

import httpx

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "operator"), str(REPO)]

from prefect_workpool_operator.prefect.client import PrefectClient  # noqa: E402
from prefect_workpool_operator.prefect.flow_runs import BULK_LIMIT  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "200"))
STARTED = RUNS // 2
STATE = {"type": "SCHEDULED", "name": "Requeued", "message": "benchmark"}


def worker(seeder: PrefectSeeder, runs: list[str], go: threading.Event, started: list[str]) -> None:
    go.wait()
    for run in runs:
        seeder.set_state(run, {"type": "RUNNING"}, force=False)
        started.append(run)


async def bulk(client: PrefectClient, ids: list[str]) -> int:
    calls = 0
    for i in range(0, len(ids), BULK_LIMIT):
        await client.bulk_set_pending_runs(ids[i : i + BULK_LIMIT], STATE)
        calls += 1
    return calls


async def per_run(client: PrefectClient, ids: list[str]) -> int:
    calls = 0
    for run in ids:
        calls += 1 if await client.set_pending_run(run, STATE) is None else 2
    return calls


async def trial(seeder: PrefectSeeder, method) -> tuple[int, int, int, float]:
    pool = f"bench-{method.__name__}-{time.monotonic_ns()}"
    seeder.create_ecs_pool(pool)
    deployment = seeder.create_deployment(pool)
    runs = seeder.create_runs_bulk(deployment, RUNS, {"type": "PENDING"})
    # Interleave: the worker starts every other run, in the order the writes reach them.
    victims = runs[::2][:STARTED]
    started: list[str] = []
    go = threading.Event()
    thread = threading.Thread(target=worker, args=(PrefectSeeder(seeder.api_url), victims, go, started))
    thread.start()
    async with httpx.AsyncClient(timeout=60) as http:
        client = PrefectClient(http, seeder.api_url)
        t0 = time.monotonic()
        go.set()
        calls = await method(client, runs)
        took = time.monotonic() - t0
    thread.join()
    history_resets = 0
    for run in started:
        states = seeder._json("GET", f"/flow_run_states/?flow_run_id={run}")
        names = [s["type"] for s in sorted(states, key=lambda s: s["timestamp"])]
        if "RUNNING" in names and names.index("RUNNING") < len(names) - 1 and "SCHEDULED" in names[names.index("RUNNING"):]:
            history_resets += 1
    return history_resets, len(started), calls, took


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(pathlib.Path(tmp),
                                                             services={"LATE_RUNS": False, "FOREMAN": False}) as server:
        seeder = PrefectSeeder(server.api_url)
        print(f"{RUNS} stale PENDING runs, a worker starting {STARTED} of them during the writes; ownership off")
        print(f"{'method':<10} {'RUNNING->SCHEDULED':>20} {'started':>8} {'requests':>9} {'seconds':>8}")
        for method in (bulk, per_run):
            resets, started, calls, took = await trial(seeder, method)
            print(f"{method.__name__:<10} {resets:>20} {started:>8} {calls:>9} {took:>8.1f}")


if __name__ == "__main__":
    asyncio.run(main())
