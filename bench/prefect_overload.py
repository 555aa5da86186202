"""Overload degrades, never wedges: 200 policies while Prefect answers in seconds, then recovers.

A real Prefect server behind a loopback proxy (hack/sandbox/tcp_proxy.py) that, in the
slow phase, holds every request BENCH_SLOW_DELAY seconds (default 6). BENCH_POLICIES
policies (default 200, one pool each, interval 30 s) run the operator's own cycle
(``run_cycle``, stale-run recovery on) on their ``core.schedule`` slots in one process,
sharing one ``PrefectHttp`` (50 connections), as the operator does. Phases: normal
(BENCH_NORMAL, 45 s), slow (BENCH_SLOW, 90 s; it starts by cutting every open connection,
the event stream's too, so the cache cannot simply ride it out), recovered
(BENCH_RECOVERED, 75 s).

Printed per variant (before = every read sent, after = the event-stream cache) and phase:
cycles, failed cycles, mean cycle time, p99 start lateness (start − scheduled slot: "cycles
get later"), Ready message changes while not Ready (flapping: each is a status write and
an Event), and the time from recovery until every policy had a good cycle again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "operator"), str(REPO)]

import httpx  # noqa: E402

from prefect_workpool_operator.core import schedule  # noqa: E402
from prefect_workpool_operator.prefect.stream import EventStreams  # noqa: E402
from prefect_workpool_operator.prefect.http import PrefectHttp  # noqa: E402
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder, utcnow  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402
from sandbox.tcp_proxy import TcpProxy  # noqa: E402

INTERVAL = 30.0


@dataclass
class Cycle:
    policy: int
    due: float
    start: float
    seconds: float
    ready: bool
    message: str


async def run_variant(api_url: str, pools: list[str], variant: str, proxy: TcpProxy,
                      phases: tuple[float, float, float], delay: float) -> tuple[list[Cycle], float, int]:
    requests = 0

    async def count(_: httpx.Response) -> None:
        nonlocal requests
        requests += 1

    events = EventStreams(dt.timedelta(seconds=300)) if variant == "after" else None
    http = PrefectHttp(event_hooks={"response": [count]}, events=events)
    cycles: list[Cycle] = []
    began = time.time()
    stop = began + sum(phases)

    async def policy(index: int, pool: str) -> None:
        runtime = PolicyRuntime()
        body = {"metadata": {"namespace": "bench", "name": pool, "generation": 1, "uid": pool,
                             "creationTimestamp": "2026-11-30T00:00:00Z"},
                "spec": {"prefect": {"apiUrl": api_url, "workPool": pool}, "staleRuns": {}}}
        offset = schedule.phase(pool, INTERVAL)
        due = schedule.next_start(time.time(), INTERVAL, offset)
        first = True
        while due < stop:
            await asyncio.sleep(max(0.0, due - time.time()))
            start = time.time()
            outcome = await run_cycle(body, http=http, secrets=None, runtime=runtime, now=utcnow())  # type: ignore[arg-type]
            body["status"] = outcome.status
            ready = outcome.status["conditions"][0]
            cycles.append(Cycle(index, due, start, time.time() - start, ready["status"] == "True", ready["message"]))
            due = schedule.start_after_cycle(max(start, due), INTERVAL, offset, first=first)  # as the operator does
            first = False

    async def phase_switch() -> None:
        await asyncio.sleep(phases[0])
        proxy.delay = delay
        proxy.cut()  # a slow Prefect drops connections too: the event stream among them
        await asyncio.sleep(phases[1])
        proxy.delay = 0.0

    switch = asyncio.ensure_future(phase_switch())
    await asyncio.gather(*(policy(i, p) for i, p in enumerate(pools)))
    await switch
    await http.aclose()
    return cycles, began, requests


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else (values[0] if values else 0.0)


def summarize(cycles: list[Cycle], began: float, phases: tuple[float, float, float], policies: int) -> list[dict[str, str]]:
    bounds = [began, began + phases[0], began + phases[0] + phases[1], began + sum(phases)]
    rows = []
    for name, lo, hi in zip(("normal", "slow", "recovered"), bounds, bounds[1:]):
        inside = [c for c in cycles if lo <= c.start < hi]
        flaps = 0
        last: dict[int, str] = {}
        for c in sorted(inside, key=lambda c: c.start):
            if not c.ready:
                flaps += c.policy in last and last[c.policy] != c.message
                last[c.policy] = c.message
            else:
                last.pop(c.policy, None)
        row = {
            "phase": name,
            "cycles": str(len(inside)),
            "failed": str(sum(not c.ready for c in inside)),
            "mean cycle (s)": f"{statistics.fmean(c.seconds for c in inside):.2f}" if inside else "-",
            "p99 lateness (s)": f"{p99([c.start - c.due for c in inside]):.1f}" if inside else "-",
            "Ready message changes": str(flaps),
        }
        if name == "recovered":
            good: dict[int, float] = {}
            for c in sorted(inside, key=lambda c: c.start):
                if c.ready and c.policy not in good:
                    good[c.policy] = c.start + c.seconds
            row["all good again after (s)"] = (f"{max(good.values()) - lo:.1f}" if len(good) == policies
                                               else f"never ({len(good)}/{policies})")
        rows.append(row)
    return rows


async def main() -> None:
    logging.getLogger("prefect_workpool_operator").setLevel(logging.ERROR)  # 200 policies' failure lines
    policies = int(os.environ.get("BENCH_POLICIES", "200"))
    delay = float(os.environ.get("BENCH_SLOW_DELAY", "6"))
    phases = (float(os.environ.get("BENCH_NORMAL", "45")), float(os.environ.get("BENCH_SLOW", "90")),
              float(os.environ.get("BENCH_RECOVERED", "75")))
    variants = os.environ.get("BENCH_VARIANTS", "before,after").split(",")
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(pathlib.Path(tmp)) as server, \
            PrefectSeeder(server.api_url) as seeder:
        pools = [f"overload-{i}-{uuid.uuid4().hex[:4]}" for i in range(policies)]
        for pool in pools:
            seeder.create_ecs_pool(pool)
        url = httpx.URL(server.api_url)
        results = {}
        for variant in variants:
            with TcpProxy(url.host, url.port or 80) as proxy:
                print(f"[{variant}] {policies} policies: {phases[0]:.0f}s normal, {phases[1]:.0f}s at +{delay:g}s "
                      f"per request, {phases[2]:.0f}s recovered ...", flush=True)
                cycles, began, requests = await run_variant(proxy.url("/api"), pools, variant, proxy, phases, delay)
                results[variant] = (summarize(cycles, began, phases, policies), requests)
    print(f"\nOverload ({policies} policies, interval {INTERVAL:.0f}s, Prefect +{delay:g}s per request in the slow phase)")
    columns = ["phase", "cycles", "failed", "mean cycle (s)", "p99 lateness (s)", "Ready message changes",
               "all good again after (s)"]
    print("| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for variant, (rows, requests) in results.items():
        for row in rows:
            print(f"| {variant} | " + " | ".join(row.get(c, "") for c in columns) + " |")
        print(f"| {variant} | requests to Prefect in all: {requests} |" + " |" * (len(columns) - 1))


if __name__ == "__main__":
    asyncio.run(main())
