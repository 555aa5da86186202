"""Benchmark: how long before (or after) a scheduled run's start is a worker counted for it?

A real Prefect server holds a deployment on an interval schedule and its next runs
(SCHEDULED, created ahead as Prefect's scheduler does — made by the benchmark, because
that service's insert fails with the SQLAlchemy 2.1 in the server venv); moto plays ECS. Two policies cycle in real time on two identical pools, one
without ``scaling.lookahead`` and one with it (DesiredCount mode, minWorkers 0). A
simulated worker takes each run as soon as it is due and desiredCount is at least 1.
For every scheduled run: seconds from its expected start to the first cycle whose
desiredCount >= 1 counts it (negative: the worker was asked for ahead of time).
moto reports a task running the moment desiredCount is set; on Fargate add the task's
start time (tens of seconds) — that is what the lookahead should cover.

Environment: BENCH_LOOKAHEAD (45s), BENCH_SCHEDULE_SECONDS (97: not a multiple of the cycle, so runs fall at different phases), BENCH_INTERVAL_SECONDS
(10), BENCH_RUNS (4 runs measured per policy). Prints a table; asserts nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import statistics
import sys
import tempfile
import time

import boto3
import httpx

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "operator"), str(REPO)]

from prefect_workpool_operator.core.durations import parse_duration  # noqa: E402
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle  # noqa: E402
from sandbox.moto_server import MotoServer  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder, iso, scheduled_state, utcnow  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402

LOOKAHEAD = os.environ.get("BENCH_LOOKAHEAD", "45s")
SCHEDULE = float(os.environ.get("BENCH_SCHEDULE_SECONDS", "97"))
INTERVAL = float(os.environ.get("BENCH_INTERVAL_SECONDS", "10"))
RUNS = int(os.environ.get("BENCH_RUNS", "4"))
REGION = "us-east-1"


class NoSecrets:
    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise AssertionError("no Secrets in this benchmark")


class Policy:
    def __init__(self, label: str, seeder: PrefectSeeder, moto: MotoServer, ecs, lookahead: str | None,
                 start: dt.datetime) -> None:
        self.label, self.seeder, self.ecs = label, seeder, ecs
        self.pool = f"la-{label}-{int(time.time())}"
        seeder.create_ecs_pool(self.pool)
        flow = seeder.create_flow("lookahead-bench")
        anchor = start + dt.timedelta(seconds=30)
        deployment = {"name": self.pool, "flow_id": flow, "work_pool_name": self.pool, "entrypoint": "f.py:f",
                      "schedules": [{"schedule": {"interval": SCHEDULE, "anchor_date": iso(anchor)}, "active": True}]}
        self.deployment = seeder._json("POST", "/deployments/", json=deployment)["id"]
        # The runs the scheduler service makes ahead of time (≥ 1 h, ≥ 3 runs). Its own insert
        # fails with the SQLAlchemy 2.1 of the server venv here, so the benchmark makes them.
        for k in range(RUNS + 2):
            seeder.create_runs(self.deployment, 1, scheduled_state(anchor + dt.timedelta(seconds=k * SCHEDULE)))
        self.cluster = f"la-{label}"
        ecs.create_cluster(clusterName=self.cluster)
        td = ecs.register_task_definition(family="w", containerDefinitions=[{"name": "w", "image": "x", "memory": 512}])
        ecs.create_service(cluster=self.cluster, serviceName="workers", desiredCount=0,
                           taskDefinition=td["taskDefinition"]["taskDefinitionArn"])
        scaling = {"minWorkers": 0, "maxWorkers": 5, "backlogPerWorker": 1, "scaleDownStabilization": "0s",
                   "scaleDownCooldown": "0s", **({"lookahead": lookahead} if lookahead else {})}
        self.body = {"metadata": {"name": label, "namespace": "bench", "generation": 1}, "status": {},
                     "spec": {"prefect": {"apiUrl": seeder.api_url, "workPool": self.pool}, "scaling": scaling,
                              "ecs": {"region": REGION, "cluster": self.cluster, "service": "workers",
                                      "endpointUrl": moto.endpoint_url}}}
        self.runtime = PolicyRuntime()
        self.counted: dict[str, float] = {}  # run id -> seconds from its expected start to being counted
        self.done: set[str] = set()

    def scheduled(self) -> list[dict]:
        return self.seeder.filter_runs({"deployments": {"id": {"any_": [self.deployment]}},
                                        "sort": "EXPECTED_START_TIME_ASC", "limit": 20})

    async def cycle(self, http: httpx.AsyncClient, measure_after: dt.datetime) -> None:
        outcome = await run_cycle(self.body, http=http, secrets=NoSecrets(), runtime=self.runtime, now=utcnow())
        ended = utcnow()
        self.body["status"] = outcome.status
        figures = outcome.status.get("scaling") or {}
        desired = figures.get("desired") or 0
        runs = [r for r in self.scheduled() if r["id"] not in self.done]
        if not runs:
            return
        first = runs[0]
        start = dt.datetime.fromisoformat(first["expected_start_time"])
        if desired >= 1 and figures.get("backlog", 0) >= 1 and first["id"] not in self.counted \
                and start >= measure_after:
            self.counted[first["id"]] = (ended - start).total_seconds()
        if desired >= 1 and ended >= start:  # the worker takes the due run
            self.seeder.set_state(first["id"], {"type": "RUNNING"})
            self.seeder.set_state(first["id"], {"type": "COMPLETED"})
            self.done.add(first["id"])


async def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with tempfile.TemporaryDirectory() as tmp, \
            PrefectServer(pathlib.Path(tmp) / "prefect") as server, \
            MotoServer(pathlib.Path(tmp) / "moto") as moto, PrefectSeeder(server.api_url) as seeder:
        ecs = boto3.client("ecs", endpoint_url=moto.endpoint_url, region_name=REGION)
        start = utcnow()
        measure_after = start + parse_duration(LOOKAHEAD) + dt.timedelta(seconds=2 * INTERVAL)
        policies = [Policy("without", seeder, moto, ecs, None, start),
                    Policy("with", seeder, moto, ecs, LOOKAHEAD, start)]
        deadline = time.monotonic() + (RUNS + 2) * SCHEDULE + 120
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline and any(len(p.counted) < RUNS for p in policies):
                tick = time.monotonic()
                await asyncio.gather(*(p.cycle(http, measure_after) for p in policies))
                await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - tick)))
        for p in policies:
            p.runtime.ecs.close()
    print(f"\nlookahead benchmark: schedule every {SCHEDULE:g}s, cycle every {INTERVAL:g}s, DesiredCount, minWorkers 0")
    print("seconds from a run's expected start to a worker counted for it (negative = ahead of time)")
    print(f"| policy | runs | each | mean |")
    print("|---|---|---|---|")
    for p in policies:
        values = list(p.counted.values())[:RUNS]
        label = f"lookahead {LOOKAHEAD}" if p.label == "with" else "no lookahead"
        mean = f"{statistics.mean(values):+.1f}" if values else "n/a"
        print(f"| {label} | {len(values)} | {', '.join(f'{v:+.1f}' for v in values)} | {mean} |")


if __name__ == "__main__":
    asyncio.run(main())
