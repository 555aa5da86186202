"""Recovery benchmark on a PostgreSQL-backed Prefect server, before and after, side by side.

Cases (runs made stale by backdating them in the database, see FACTS.md; the server
runs without its event persister, as in bench/fleet.py, so no claim or requeue events):

- the server's own limit (after one unreported warm-up round): 500 stale PENDING runs
  written with guarded ``bulk_set_state`` (≤ 50 runs, PENDING guard, never forced) at
  concurrency 1 (the anchor: serial), 2, 4, 8;
- the operator's recovery of 500 stale PENDING runs among 5,000 (4,500 PENDING for
  minutes, under the 1 h pendingTimeout), maxRunsPerCycle 500: cycles an interval apart
  (a run is acted on only when seen recoverable twice), driven with explicit clocks, no
  kopf; requests counted with an httpx event hook on the operator's own client;
- the same, the 4,500 others due two hours ago (a backlog being claimed), PENDING for minutes;
- the same 5,000 runs all due two hours ago but PENDING for minutes (none stale):
  requests and seconds per steady cycle;
- an idle policy (staleRuns set, an empty pool): Prefect requests per whole cycle.

"before" runs the operator source of BENCH_RECOVERY_BASELINE (default d140640, main
before this work, taken with `git archive`), "after" this checkout; each operator case
runs in a child process importing that source. Run with `make bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = pathlib.Path(os.environ.get("PWO_BENCH_OPERATOR_SOURCE") or REPO / "operator")
sys.path[:0] = [str(SOURCE), str(REPO / "hack"), str(REPO)]

import httpx  # noqa: E402

BASELINE = os.environ.get("BENCH_RECOVERY_BASELINE", "d140640")
STALE, AMONG = 500, 5000
INTERVAL = dt.timedelta(seconds=30)
PENDING_TIMEOUT = "1h"
CONCURRENCIES = (1, 2, 4, 8)
STATE = {"type": "SCHEDULED", "name": "Requeued", "message": "benchmark"}


# -- the operator's recovery (a child process, one operator source) -------------------------


async def operator_cycles(api_url: str, pool: str, cycles: int) -> list[dict[str, float]]:
    from prefect_workpool_operator.models import StaleRunsSpec
    from prefect_workpool_operator.prefect_api import PrefectClient
    from prefect_workpool_operator.recovery import RecoveryMemory, recover_stale_runs
    from tests.integration.recovery_helpers import Recorder

    recorder = Recorder()
    writing: list[float] = []  # when each bulk_set_state was sent and answered

    async def sent(request: httpx.Request) -> None:
        if request.url.path.endswith("/bulk_set_state"):
            writing.append(time.monotonic())

    async def answered(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/bulk_set_state"):
            writing.append(time.monotonic())

    spec = StaleRunsSpec.model_validate({"pendingTimeout": PENDING_TIMEOUT, "maxRunsPerCycle": STALE})
    memory = RecoveryMemory()
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    async with httpx.AsyncClient(event_hooks={"request": [recorder, sent], "response": [answered]}) as http:
        client = PrefectClient(http, api_url)
        for k in range(cycles):
            mark, started = recorder.mark(), time.monotonic()
            writing.clear()
            outcome = await recover_stale_runs(
                client, spec, pool=pool, queues=[], policy="bench/recovery", online_workers=frozenset(),
                dry_run=False, memory=memory, now=now + k * INTERVAL, interval=INTERVAL)
            sent = recorder.since(mark)
            out.append({"seconds": time.monotonic() - started, "requests": len(sent),
                        "writes": len(Recorder.writes(sent)), "recovered": outcome.figures["recovered"],
                        "stale": outcome.figures["stale"],
                        "writing": max(writing) - min(writing) if writing else 0.0})
    return out


async def idle_cycles(api_url: str, pool: str, cycles: int) -> list[int]:
    """Whole cycles (reconcile.run_cycle, no kopf) of a policy with staleRuns on an idle pool:
    Prefect requests per cycle."""
    from prefect_workpool_operator.reconcile import PolicyRuntime, run_cycle
    from sandbox.prefect_seed import utcnow
    from tests.integration.recovery_helpers import NoSecrets, Recorder

    recorder = Recorder()
    runtime = PolicyRuntime()
    body = {"metadata": {"name": "idle", "namespace": "bench", "generation": 1},
            "spec": {"prefect": {"apiUrl": api_url, "workPool": pool}, "staleRuns": {"pendingTimeout": "10m"}},
            "status": {}}
    out = []
    async with httpx.AsyncClient(event_hooks={"request": [recorder]}) as http:
        for _ in range(cycles):
            mark = recorder.mark()
            outcome = await run_cycle(body, http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
            body["status"] = outcome.status
            out.append(len(recorder.since(mark)))
    return out


def run_operator(source: pathlib.Path, api_url: str, pool: str, cycles: int, mode: str = "--cycles") -> list:
    env = {**os.environ, "PWO_BENCH_OPERATOR_SOURCE": str(source)}
    done = subprocess.run([sys.executable, __file__, mode, api_url, pool, str(cycles)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the server's own limit ------------------------------------------------------------------


async def guarded_writes(api_url: str, ids: list[str], concurrency: int) -> tuple[int, float, int]:
    """Guarded bulk_set_state, ≤ 50 runs per call, ``concurrency`` calls in flight: (requests, s, accepted)."""
    from prefect_workpool_operator.prefect_api import BULK_LIMIT, PrefectClient

    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as http:
        client = PrefectClient(http, api_url)

        async def one(batch: list[str]) -> int:
            async with slots:
                results = await client.bulk_set_pending_runs(batch, STATE) or {}
                return sum(1 for s in results.values() if s == "ACCEPT")

        started = time.monotonic()
        batches = [ids[i : i + BULK_LIMIT] for i in range(0, len(ids), BULK_LIMIT)]
        accepted = sum(await asyncio.gather(*(one(b) for b in batches)))
        return len(batches), time.monotonic() - started, accepted


# -- seeding --------------------------------------------------------------------------------


def psql(database_url: str, sql: str) -> None:
    parts = urlsplit(database_url.replace("postgresql+asyncpg", "postgresql"))
    subprocess.run(["psql", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port), "-U", "postgres",
                    "-d", parts.path.lstrip("/"), "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                   input=sql, text=True, check=True, stdout=subprocess.DEVNULL)


def backdate(database_url: str, ids: list[str], *, state_too: bool = True) -> None:
    """Due two hours ago and (``state_too``) PENDING for two hours, in the database itself."""
    array = "ARRAY[" + ",".join(f"'{i}'" for i in ids) + "]::uuid[]"
    sql = f"UPDATE flow_run SET expected_start_time = now() - interval '2 hours' WHERE id = ANY({array});\n"
    if state_too:
        sql += (f"UPDATE flow_run SET state_timestamp = now() - interval '2 hours' WHERE id = ANY({array});\n"
                "UPDATE flow_run_state s SET timestamp = now() - interval '2 hours' FROM flow_run r "
                f"WHERE r.state_id = s.id AND r.id = ANY({array});\n")
    psql(database_url, sql)


def pending_again(seeder, ids: list[str]) -> None:
    """Back to PENDING (forced: this is seeding), with a fresh state time."""
    for i in range(0, len(ids), 50):
        seeder._json("POST", "/flow_runs/bulk_set_state", json={
            "flow_runs": {"id": {"any_": ids[i : i + 50]}}, "state": {"type": "PENDING"}, "force": True, "limit": 50})


# -- the table ------------------------------------------------------------------------------


def table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    from bench.fleet import baseline_source, log, postgres
    from sandbox.prefect_seed import PrefectSeeder
    from sandbox.prefect_server import PrefectServer

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pwo-recovery-"))
    log(f"work dir {workdir}")
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres(workdir))
        if database_url is None:
            raise SystemExit("this benchmark needs PostgreSQL (Debian's postgresql)")
        server = stack.enter_context(PrefectServer(workdir / "prefect", database_url=database_url,
                                                   services={"LATE_RUNS": False, "FOREMAN": False, "EVENT_PERSISTER": False}, log=log))
        sources = {"before": baseline_source(workdir, BASELINE), "after": REPO / "operator"}
        limits, recover, mixed, fresh, idle = {}, {}, {}, {}, {}
        with PrefectSeeder(server.api_url) as seeder:
            started = time.monotonic()
            seeder.create_ecs_pool("limit")
            limit_ids = seeder.create_runs_bulk(seeder.create_deployment("limit", name="limit"), STALE, {"type": "PENDING"})
            seeder.create_ecs_pool("recover")
            deployment = seeder.create_deployment("recover", name="recover")
            stale_ids = seeder.create_runs_bulk(deployment, STALE, {"type": "PENDING"})
            young_ids = seeder.create_runs_bulk(deployment, AMONG - STALE, {"type": "PENDING"})
            log(f"seeded {len(limit_ids) + AMONG} runs in {time.monotonic() - started:.0f}s")
            pending_again(seeder, limit_ids)  # a warm-up round (not reported): the server's first writes are slow
            backdate(database_url, limit_ids)
            asyncio.run(guarded_writes(server.api_url, limit_ids, 1))
            for c in CONCURRENCIES:
                pending_again(seeder, limit_ids)
                backdate(database_url, limit_ids)
                log(f"guarded bulk_set_state at concurrency {c}")
                limits[c] = asyncio.run(guarded_writes(server.api_url, limit_ids, c))
            for name, source in sources.items():
                pending_again(seeder, stale_ids)
                backdate(database_url, stale_ids)
                log(f"recovery, {name}")
                recover[name] = run_operator(source, server.api_url, "recover", 3)
            backdate(database_url, young_ids, state_too=False)  # the 4,500 others now due two hours ago too
            for name, source in sources.items():
                pending_again(seeder, stale_ids)
                backdate(database_url, stale_ids)
                log(f"recovery beside {AMONG - STALE} fresh runs due long ago, {name}")
                mixed[name] = run_operator(source, server.api_url, "recover", 3)
            pending_again(seeder, stale_ids)  # all 5,000 PENDING for seconds, due two hours ago
            backdate(database_url, stale_ids + young_ids, state_too=False)
            for name, source in sources.items():
                log(f"{AMONG} PENDING for seconds, {name}")
                fresh[name] = run_operator(source, server.api_url, "recover", 4)
            seeder.create_ecs_pool("idle")
            idle = {name: run_operator(source, server.api_url, "idle", 4, "--idle") for name, source in sources.items()}

    print(f"\nGuarded bulk_set_state, {STALE} stale PENDING runs, PostgreSQL-backed Prefect (server's own limit)")
    rows = [("concurrency", "requests", "seconds", "runs/s", "accepted")]
    for c, (requests, seconds, accepted) in limits.items():
        rows.append((f"{c}{' (anchor: serial)' if c == 1 else ''}", str(requests), f"{seconds:.2f}",
                     f"{accepted / seconds:.0f}", str(accepted)))
    table(rows)

    anchor_rate = limits[1][2] / limits[1][1]
    best = max(limits, key=lambda c: limits[c][2] / limits[c][1])
    best_rate = limits[best][2] / limits[best][1]
    for title, runs in (("", recover), (f" beside {AMONG - STALE} fresh runs due two hours ago", mixed)):
        print(f"\nOperator recovery: {STALE} stale among {AMONG} PENDING{title}, maxRunsPerCycle {STALE}, cycles "
              f"{INTERVAL.seconds}s apart (explicit clocks; seen recoverable twice before acting)")
        rows = [("", "requests (all cycles)", "requests (acting cycle)", "writes", "seconds (all)",
                 "seconds (acting)", "of which writing", "recovered", "runs/s (acting)", "vs anchor",
                 f"vs server best (concurrency {best})")]
        for name, cycles in runs.items():
            acting = [c for c in cycles if c["recovered"]]
            done = cycles[: cycles.index(acting[-1]) + 1] if acting else cycles
            act_s = sum(c["seconds"] for c in acting)
            recovered = sum(c["recovered"] for c in cycles)
            rows.append((name, str(sum(c["requests"] for c in done)), str(sum(c["requests"] for c in acting)),
                         str(sum(c["writes"] for c in done)), f"{sum(c['seconds'] for c in done):.2f}", f"{act_s:.2f}",
                         f"{sum(c['writing'] for c in acting):.2f}",
                         str(recovered), f"{recovered / act_s:.0f}" if act_s else "-",
                         f"{recovered / act_s / anchor_rate:.2f}x" if act_s else "-",
                         f"{recovered / act_s / best_rate:.2f}x" if act_s else "-"))
        table(rows)

    print(f"\n{AMONG} PENDING runs due two hours ago, PENDING for seconds (none stale): per steady cycle")
    rows = [("", "requests per cycle", "seconds per cycle", "cycles (requests)")]
    for name, cycles in fresh.items():
        steady = cycles[1:]
        rows.append((name, f"{sum(c['requests'] for c in steady) / len(steady):.1f}",
                     f"{sum(c['seconds'] for c in steady) / len(steady):.2f}",
                     ", ".join(str(c["requests"]) for c in cycles)))
    table(rows)

    print("\nIdle policy (staleRuns set, no run in the pool): Prefect requests per steady cycle (run_cycle)")
    rows = [("", "requests per cycle", "per minute at 30 s", "cycles (requests)")]
    for name, counts in idle.items():
        steady = counts[1:]
        rows.append((name, f"{sum(steady) / len(steady):.1f}", f"{sum(steady) / len(steady) * 2:.0f}",
                     ", ".join(map(str, counts))))
    table(rows)
    log(f"logs in {workdir}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cycles"]:
        api_url, pool, cycles = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(json.dumps(asyncio.run(operator_cycles(api_url, pool, cycles))))
    elif sys.argv[1:2] == ["--idle"]:
        api_url, pool, cycles = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(json.dumps(asyncio.run(idle_cycles(api_url, pool, cycles))))
    else:
        main()
