"""Recovery benchmark on a PostgreSQL-backed Prefect server, before and after, side by side.

Cases (runs made stale by backdating them in the database, see FACTS.md; the server
runs without its event persister, as in bench/fleet.py, so no claim or requeue events
but the claimed case's):

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
- an idle policy (staleRuns set, an empty pool): Prefect requests per whole cycle;
- claimed (as in production), last, on the same 5,000 runs (the 4,500 others due now again):
  each stale run carrying a ``prefect.worker.submitted-flow-run`` event by a worker that is gone
  (never heartbeats), and an ECS check against moto (the cluster runs no task). The events go
  through the server's own ``POST /events`` (500 in one request), sent with the Host header
  ``ephemeral-prefect``: prefect 3.8.8 (``server/api/events.py``, ``is_ephemeral_request``)
  then stores them through the event persister's handler before answering, which the server
  does not otherwise do without its persister service; the bench waits until
  ``/events/filter`` reads them all.

One set of 5,000 runs serves every case: creating runs is what takes long (30-55 ms each).

BENCH_RECOVERY_RUNS sets the stale run count (default 500; the others are nine times as many)
for short trial runs.

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
import uuid
from collections import Counter
from urllib.parse import urlsplit

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = pathlib.Path(os.environ.get("PWO_BENCH_OPERATOR_SOURCE") or REPO / "operator")
sys.path[:0] = [str(SOURCE), str(REPO / "hack"), str(REPO)]

import httpx  # noqa: E402

BASELINE = os.environ.get("BENCH_RECOVERY_BASELINE", "d140640")
STALE = int(os.environ.get("BENCH_RECOVERY_RUNS", "500"))
AMONG = 10 * STALE
INTERVAL = dt.timedelta(seconds=30)
PENDING_TIMEOUT = "1h"
CONCURRENCIES = (1, 2, 4, 8)
STATE = {"type": "SCHEDULED", "name": "Requeued", "message": "benchmark"}
LIMIT_TIMEOUT = 120.0  # seconds per guarded write when measuring the server's limit


# -- the operator's recovery (a child process, one operator source) -------------------------


def ecs_check(ecs: list[str]):
    """(AwsClient, EcsInfrastructureCheck) on moto at ``ecs`` = [endpoint, cluster], in either
    source's layout (``aws`` package now, ``aws_api`` module before)."""
    try:
        from prefect_workpool_operator.aws import AwsClient, AwsCredentials, EcsInfrastructureCheck
    except ImportError:
        from prefect_workpool_operator.aws_api import AwsClient, AwsCredentials, EcsInfrastructureCheck
    endpoint, cluster = ecs
    aws = AwsClient("us-east-1", endpoint_url=endpoint, credentials=AwsCredentials("testing", "testing"))
    return aws, EcsInfrastructureCheck(aws, cluster)


async def operator_cycles(api_url: str, pool: str, cycles: int, ecs: list[str] | None = None) -> list[dict[str, float]]:
    from prefect_workpool_operator.schema.models import StaleRunsSpec
    from prefect_workpool_operator.prefect.client import PrefectClient
    from prefect_workpool_operator.cycle.memory import RecoveryMemory
    from prefect_workpool_operator.cycle.reconcile import recover_stale_runs
    from tests.support.recovery import Recorder

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
    aws, check = ecs_check(ecs) if ecs else (None, None)
    out = []
    async with httpx.AsyncClient(event_hooks={"request": [recorder, sent], "response": [answered]}) as http:
        client = PrefectClient(http, api_url)
        for k in range(cycles):
            mark, started = recorder.mark(), time.monotonic()
            writing.clear()
            aws_before = sum(aws.calls.values()) if aws else 0
            if aws:
                aws.start_cycle()
            outcome = await recover_stale_runs(
                client, spec, pool=pool, queues=[], policy="bench/recovery", online_workers=frozenset(),
                dry_run=False, memory=memory, now=now + k * INTERVAL, interval=INTERVAL, infrastructure_check=check)
            sent = recorder.since(mark)
            out.append({"seconds": time.monotonic() - started, "requests": len(sent),
                        "writes": len(Recorder.writes(sent)), "recovered": outcome.figures["recovered"],
                        "stale": outcome.figures["stale"], "ecs": (sum(aws.calls.values()) - aws_before) if aws else 0,
                        "paths": [f"{r.method} {r.url.path.split('/api', 1)[1]}" for r in sent],
                        "writing": max(writing) - min(writing) if writing else 0.0})
    if aws:
        aws.close()
    return out


async def idle_cycles(api_url: str, pool: str, cycles: int) -> list[int]:
    """Whole cycles (reconcile.run_cycle, no kopf) of a policy with staleRuns on an idle pool:
    Prefect requests per cycle."""
    from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
    from sandbox.prefect_seed import utcnow
    from tests.support.recovery import NoSecrets, Recorder

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


def run_operator(source: pathlib.Path, api_url: str, pool: str, cycles: int, mode: str = "--cycles",
                 ecs: list[str] | None = None) -> list:
    env = {**os.environ, "PWO_BENCH_OPERATOR_SOURCE": str(source)}
    done = subprocess.run([sys.executable, __file__, mode, api_url, pool, str(cycles), *(ecs or [])], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the server's own limit ------------------------------------------------------------------


async def guarded_writes(api_url: str, ids: list[str], concurrency: int) -> tuple[int, float, int]:
    """Guarded bulk_set_state, ≤ 50 runs per call, ``concurrency`` calls in flight: (requests, s, accepted)."""
    from prefect_workpool_operator.prefect.client import PrefectClient
    from prefect_workpool_operator.prefect.flow_runs import BULK_LIMIT

    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as http:
        # The server's limit, not the operator's deadline: 8 writes in flight on a busy machine
        # can take longer than the operator's 10 s (a write is never sent twice, so it would fail).
        client = PrefectClient(http, api_url, timeout=LIMIT_TIMEOUT)

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


def backdate(database_url: str, ids: list[str], *, state_too: bool = True, at: dt.datetime | None = None) -> None:
    """Due two hours ago and (``state_too``) PENDING for two hours, in the database itself;
    ``at``: that exact time instead of two hours ago."""
    when = f"timestamptz '{at.isoformat()}'" if at else "now() - interval '2 hours'"
    array = "ARRAY[" + ",".join(f"'{i}'" for i in ids) + "]::uuid[]"
    sql = f"UPDATE flow_run SET expected_start_time = {when} WHERE id = ANY({array});\n"
    if state_too:
        sql += (f"UPDATE flow_run SET state_timestamp = {when} WHERE id = ANY({array});\n"
                f"UPDATE flow_run_state s SET timestamp = {when} FROM flow_run r "
                f"WHERE r.state_id = s.id AND r.id = ANY({array});\n")
    psql(database_url, sql)


def due_now(database_url: str, ids: list[str]) -> None:
    """Expected to start now (not stale candidates), as runs just created."""
    array = "ARRAY[" + ",".join(f"'{i}'" for i in ids) + "]::uuid[]"
    psql(database_url, f"UPDATE flow_run SET expected_start_time = now() WHERE id = ANY({array});\n")


def pending_again(seeder, ids: list[str]) -> None:
    """Back to PENDING (forced: this is seeding), with a fresh state time."""
    for i in range(0, len(ids), 50):
        seeder._json("POST", "/flow_runs/bulk_set_state", json={
            "flow_runs": {"id": {"any_": ids[i : i + 50]}}, "state": {"type": "PENDING"}, "force": True, "limit": 50})


SUBMITTED = "prefect.worker.submitted-flow-run"
EVENTS_PER_POST = 500  # POST /events sets no limit on a batch (prefect 3.8.8); 500 took 1.6-9.4 s here


def emit_claims(seeder, ids: list[str], pool: str, worker: str, occurred: dt.datetime) -> float:
    """Each run's ``submitted-flow-run`` event by ``worker`` (built as prefect 3.8.8's worker does,
    see PrefectSeeder.submitted_event), occurring at ``occurred``; stored by the server's
    persister handler (see the module docstring); returns the seconds until all are readable."""
    from sandbox.prefect_seed import iso

    template = seeder.submitted_event(worker, "ecs", ids[0], pool)
    names: dict[str, str] = {}
    for i in range(0, len(ids), 200):
        page = seeder._json("POST", "/flow_runs/filter", json={"flow_runs": {"id": {"any_": ids[i : i + 200]}}, "limit": 200})
        names.update({r["id"]: r["name"] for r in page})
    events = []
    for run_id in ids:
        related = [dict(r) for r in template["related"]]
        for r in related:
            if r["prefect.resource.role"] == "flow-run":
                r.update({"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.name": names[run_id]})
        events.append({**template, "id": str(uuid.uuid4()), "occurred": iso(occurred), "related": related})
    started = time.monotonic()
    for i in range(0, len(events), EVENTS_PER_POST):  # the server stores each in its own transaction
        seeder._request("POST", "/events", json=events[i : i + EVENTS_PER_POST], headers={"Host": "ephemeral-prefect"})
    body = {"filter": {"event": {"name": [SUBMITTED]}, "related": {"id": [f"prefect.flow-run.{r}" for r in ids]},
                       "occurred": {"since": iso(occurred - dt.timedelta(minutes=1))}}, "limit": 1}
    seeder.wait_for(lambda: seeder._json("POST", "/events/filter", json=body)["total"] >= len(ids), timeout=120)
    return time.monotonic() - started


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
    from sandbox.moto_server import MotoServer
    from sandbox.prefect_server import PrefectServer
    from tests.support.ecs_sandbox import EcsSandbox

    began = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pwo-recovery-"))
    log(f"work dir {workdir}")
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres(workdir))
        if database_url is None:
            raise SystemExit("this benchmark needs PostgreSQL (Debian's postgresql)")
        server = stack.enter_context(PrefectServer(workdir / "prefect", database_url=database_url,
                                                   services={"LATE_RUNS": False, "FOREMAN": False, "EVENT_PERSISTER": False}, log=log))
        sources = {"before": baseline_source(workdir, BASELINE), "after": REPO / "operator"}
        limits, recover, mixed, fresh, idle, claimed = {}, {}, {}, {}, {}, {}
        with PrefectSeeder(server.api_url) as seeder:
            started = time.monotonic()
            # One set of runs serves every case (creating runs is the slow part: ~30-55 ms each):
            # the server's limit writes the 500 stale ones back and forth, and the claimed case,
            # whose claim events no other case may see, comes last.
            seeder.create_ecs_pool("recover")
            deployment = seeder.create_deployment("recover", name="recover")
            stale_ids = seeder.create_runs_bulk(deployment, STALE, {"type": "PENDING"})
            young_ids = seeder.create_runs_bulk(deployment, AMONG - STALE, {"type": "PENDING"})
            log(f"seeded {AMONG} runs in {time.monotonic() - started:.0f}s")
            pending_again(seeder, stale_ids)  # a warm-up round (not reported): the server's first writes are slow
            backdate(database_url, stale_ids)
            asyncio.run(guarded_writes(server.api_url, stale_ids, 1))
            for c in CONCURRENCIES:
                pending_again(seeder, stale_ids)
                backdate(database_url, stale_ids)
                log(f"guarded bulk_set_state at concurrency {c}")
                limits[c] = asyncio.run(guarded_writes(server.api_url, stale_ids, c))
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
            # Claimed, as in production, on the same runs: the 4,500 others due now again (PENDING
            # for minutes, as in the first case), each stale run claimed by a worker that is gone.
            moto = stack.enter_context(MotoServer(workdir / "moto", log))
            ecs = [moto.endpoint_url, EcsSandbox(moto).cluster()]  # no task runs there
            due_now(database_url, young_ids)
            claimed_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
            seconds = emit_claims(seeder, stale_ids, "recover", "gone", claimed_at)
            log(f"{len(stale_ids)} claim events readable {seconds:.1f}s after sending")
            for k, (name, source) in enumerate(sources.items()):
                pending_again(seeder, stale_ids)
                # PENDING seconds before the claim, as a worker proposes PENDING and then submits
                # (a time per source: a run's states cannot share one).
                backdate(database_url, stale_ids, at=claimed_at - dt.timedelta(seconds=1 + k))
                log(f"recovery of claimed runs, ECS check on moto, {name}")
                claimed[name] = cycles = run_operator(source, server.api_url, "recover", 3, ecs=ecs)
                acting = [c for c in cycles if c["recovered"]]
                log(f"  requests per cycle {[c['requests'] for c in cycles]}, acting cycle "
                    f"{sum(c['recovered'] for c in acting)} recovered in {sum(c['seconds'] for c in acting):.2f}s: "
                    + ", ".join(f"{n}× {p}" for p, n in Counter(p for c in acting for p in c["paths"]).items()))


    print(f"\nGuarded bulk_set_state, {STALE} stale PENDING runs, PostgreSQL-backed Prefect (server's own limit)")
    rows = [("concurrency", "requests", "seconds", "runs/s", "accepted")]
    for c, (requests, seconds, accepted) in limits.items():
        rows.append((f"{c}{' (anchor: serial)' if c == 1 else ''}", str(requests), f"{seconds:.2f}",
                     f"{accepted / seconds:.0f}", str(accepted)))
    table(rows)

    anchor_rate = limits[1][2] / limits[1][1]
    best = max(limits, key=lambda c: limits[c][2] / limits[c][1])
    best_rate = limits[best][2] / limits[best][1]
    claimed_title = (f", each claimed by a gone worker (submitted-flow-run events stored), ECS check on moto "
                     "(no task)")
    for title, runs in (("", recover), (f" beside {AMONG - STALE} fresh runs due two hours ago", mixed),
                        (claimed_title, claimed)):
        print(f"\nOperator recovery: {STALE} stale among {AMONG} PENDING{title}, maxRunsPerCycle {STALE}, cycles "
              f"{INTERVAL.seconds}s apart (explicit clocks; seen recoverable twice before acting)")
        rows = [("", "requests (all cycles)", "requests (acting cycle)", "writes", "seconds (all)",
                 "seconds (acting)", "of which writing", "recovered", "runs/s (acting)", "vs anchor",
                 f"vs server best (concurrency {best})")]
        if runs is claimed:
            rows[0] += ("ECS calls (acting)", "requests per cycle")
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
            if runs is claimed:
                rows[-1] += (str(sum(c["ecs"] for c in acting)), ", ".join(str(c["requests"]) for c in cycles))
        table(rows)
    for name, cycles in claimed.items():  # what the claimed case's observing and acting cycles sent
        first = next((c for c in cycles if c["recovered"]), None)
        for label, sent in (("observing", cycles[: cycles.index(first)] if first else cycles),
                            ("acting", [c for c in cycles if c["recovered"]])):
            paths = Counter(p for c in sent for p in c["paths"])
            print(f"  {label} cycle, {name}: " + ", ".join(f"{n}× {p}" for p, n in paths.items()))

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
    log(f"logs in {workdir}; the whole benchmark took {time.monotonic() - began:.0f}s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--cycles"]:
        api_url, pool, cycles = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(json.dumps(asyncio.run(operator_cycles(api_url, pool, cycles, sys.argv[5:7] or None))))
    elif sys.argv[1:2] == ["--idle"]:
        api_url, pool, cycles = sys.argv[2], sys.argv[3], int(sys.argv[4])
        print(json.dumps(asyncio.run(idle_cycles(api_url, pool, cycles))))
    else:
        main()
