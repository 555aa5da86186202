"""Prefect request budget and reaction time: polling every cycle (before) vs the event-stream cache (after).

Against a real Prefect server (hack/sandbox), through the operator's own cycle code:

1. Budget: BENCH_BUDGET_POLICIES idle policies (default 20), each on its own pool with one
   worker heartbeating every 30 s like a real one, cycles every 30 s (``run_cycle`` with
   stale-run recovery on: what an idle policy really sends), spread over the interval.
   Prints Prefect requests per minute per idle policy, first interval excluded, over
   BENCH_BUDGET_SECONDS (default 420: the 300 s resync falls inside the window) — the
   Prefect Cloud target is ≤ 2.
2. Reaction: one policy cycling every second (so the figure is the cache's delay, not the
   interval's phase; a real policy adds up to one interval) measures the time from a change
   to the first cycle that reports it — a new PENDING run (an event), a new Late run (an
   event), a SCHEDULED run becoming due (no event: the due time read at the last resync),
   a worker going OFFLINE (no event: the heartbeat deadline; timed from the moment a 0.2 s
   side poller first sees the server mark it).
3. Lookahead (``scaling.lookahead``): the same idle policies' Prefect reads with a lookahead
   of 10 min (observe_pool + the backlog read, as observe does) — polling; the event cache
   reading the lookahead count every cycle (what main did before, "cache, count/cycle");
   and the cache counting it from its cached list. Reactions with a cycle every second:
   a SCHEDULED run entering the window (no event), and runs the scheduler inserts by SQL
   (no event) seconds after a deployment change (its event).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "operator"), str(REPO)]

import httpx  # noqa: E402

from prefect_workpool_operator.core.health import PoolObservation  # noqa: E402
from prefect_workpool_operator.prefect.client import PrefectClient  # noqa: E402
from prefect_workpool_operator.prefect.backlog import count_upcoming, read_backlog  # noqa: E402
from prefect_workpool_operator.prefect.stream import EventStreams  # noqa: E402
from prefect_workpool_operator.prefect.http import PrefectHttp  # noqa: E402
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder, late_state, scheduled_state, utcnow  # noqa: E402
from sandbox.prefect_scheduler import insert_like_the_scheduler  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402

INTERVAL = 30.0
HEARTBEAT = 30


class Counter:
    def __init__(self) -> None:
        self.requests: list[float] = []

    async def __call__(self, response: httpx.Response) -> None:
        self.requests.append(time.monotonic())


def http_for(variant: str, counter: Counter) -> PrefectHttp:
    events = EventStreams(dt.timedelta(seconds=300)) if variant == "after" else None
    return PrefectHttp(event_hooks={"response": [counter]}, events=events)


class Sampler:
    """Reads ``probe()`` once a second in the background, keeping (start time, value): the
    reaction figures are the delay from a change to the first reading that shows it."""

    def __init__(self, probe: Callable[[], Awaitable[Any]]) -> None:
        self.probe = probe
        self.readings: list[tuple[float, Any]] = []
        self.running = True
        self.task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while self.running:
            began = time.monotonic()
            self.readings.append((began, await self.probe()))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))

    @property
    def last(self) -> Any:
        return self.readings[-1][1]

    async def seen(self, since: float, check: Callable[[Any], bool], timeout: float = 120) -> float:
        while time.monotonic() - since < timeout:
            hits = [t for t, value in self.readings if t >= since and check(value)]
            if hits:
                return hits[0] - since
            await asyncio.sleep(0.1)
        return float("nan")

    async def stop(self) -> None:
        self.running = False
        await self.task


async def budget(seeder: PrefectSeeder, variant: str, policies: int, seconds: float) -> dict[str, float]:
    pools = [f"budget-{variant}-{i}-{uuid.uuid4().hex[:4]}" for i in range(policies)]
    for pool in pools:
        seeder.create_ecs_pool(pool)
        seeder.heartbeat_worker(pool, f"{pool}-worker", HEARTBEAT)
    counter = Counter()
    http = http_for(variant, counter)
    start = time.monotonic()
    stop = start + seconds

    async def heartbeats() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(HEARTBEAT)
            for pool in pools:
                await asyncio.to_thread(seeder.heartbeat_worker, pool, f"{pool}-worker", HEARTBEAT)

    async def policy(index: int, pool: str) -> int:
        runtime = PolicyRuntime()
        body = {"metadata": {"namespace": "bench", "name": pool, "generation": 1,
                             "creationTimestamp": "2026-11-30T00:00:00Z"},
                "spec": {"prefect": {"apiUrl": seeder.api_url, "workPool": pool}, "staleRuns": {}}}
        await asyncio.sleep(INTERVAL * index / policies)
        failed = 0
        while time.monotonic() < stop:
            began = time.monotonic()
            outcome = await run_cycle(body, http=http, secrets=None, runtime=runtime, now=utcnow())  # type: ignore[arg-type]
            body["status"] = outcome.status
            failed += outcome.status["conditions"][0]["status"] != "True"
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - began)))
        return failed

    beat = asyncio.ensure_future(heartbeats())
    failed = sum(await asyncio.gather(*(policy(i, p) for i, p in enumerate(pools))))
    beat.cancel()
    streams = len(http.events.streams) if http.events else 0
    await http.aclose()
    window = [t for t in counter.requests if t >= start + INTERVAL]
    minutes = (stop - start - INTERVAL) / 60
    return {"per_policy_min": len(window) / policies / minutes, "failed": failed, "streams": streams}


async def reaction(seeder: PrefectSeeder, variant: str) -> dict[str, float]:
    pool = f"react-{variant}-{uuid.uuid4().hex[:6]}"
    seeder.create_ecs_pool(pool)
    deployment = seeder.create_deployment(pool, name=pool)
    seeder.heartbeat_worker(pool, "steady", 300)  # keeps the pool READY: no pool event for the other
    seeder.heartbeat_worker(pool, "leaving", 5)
    counter = Counter()
    http = http_for(variant, counter)
    client = PrefectClient(http, seeder.api_url)
    sampler = Sampler(lambda: client.observe_pool(pool, [], utcnow()))
    seen = sampler.seen
    await asyncio.sleep(8)  # warm: the stream live, every part read under it
    figures: dict[str, float] = {}
    base: PoolObservation = sampler.last

    t0 = time.monotonic()
    await asyncio.to_thread(seeder.create_runs, deployment, 1, {"type": "PENDING"})
    figures["new PENDING run"] = await seen(t0, lambda o: o.pending > base.pending)

    t0 = time.monotonic()
    await asyncio.to_thread(seeder.create_runs, deployment, 1, late_state(60))
    figures["new Late run"] = await seen(t0, lambda o: o.late > base.late)
    late_now = sampler.last.late

    await asyncio.sleep(4)  # let the cache settle on the new counts
    due = utcnow() + dt.timedelta(seconds=6)
    await asyncio.to_thread(seeder.create_runs, deployment, 1, scheduled_state(due))
    while utcnow() < due:
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    figures["run becoming due (no event)"] = await seen(t0, lambda o: o.late > late_now)

    def offline() -> bool:
        return any(w["name"] == "leaving" and w["status"] == "OFFLINE" for w in seeder.read_workers(pool))

    while not await asyncio.to_thread(offline):
        await asyncio.sleep(0.2)
    t0 = time.monotonic()
    figures["worker going OFFLINE (no event)"] = await seen(t0, lambda o: o.workers_offline >= 1)
    await sampler.stop()
    await http.aclose()
    return figures


LOOKAHEAD = dt.timedelta(minutes=10)


async def lookahead_budget(seeder: PrefectSeeder, mode: str, policies: int, seconds: float) -> float:
    """Requests/min per idle policy with a lookahead: ``poll``, ``count`` (cache, the count read
    every cycle) or ``cached`` (the count from the cached list)."""
    pools = [f"ahead-{mode}-{i}-{uuid.uuid4().hex[:4]}" for i in range(policies)]
    for pool in pools:
        seeder.create_ecs_pool(pool)
        deployment = seeder.create_deployment(pool, name=pool)
        seeder.create_runs(deployment, 1, scheduled_state(utcnow() + dt.timedelta(hours=2)))  # beyond the window
    counter = Counter()
    http = http_for("before" if mode == "poll" else "after", counter)
    start = time.monotonic()
    stop = start + seconds

    async def policy(index: int, pool: str) -> None:
        client = PrefectClient(http, seeder.api_url)
        await asyncio.sleep(INTERVAL * index / policies)
        while time.monotonic() < stop:
            began, now = time.monotonic(), utcnow()
            await client.observe_pool(pool, [], now, lookahead=LOOKAHEAD if mode == "cached" else dt.timedelta(0))
            if mode == "cached":
                await read_backlog(client, pool, [], now, lookahead=LOOKAHEAD, include_pending=False,
                                   per_queue=False, known=set())
            else:
                await count_upcoming(client, pool, [], now, LOOKAHEAD)
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - began)))

    await asyncio.gather(*(policy(i, p) for i, p in enumerate(pools)))
    await http.aclose()
    window = [t for t in counter.requests if t >= start + INTERVAL]
    return len(window) / policies / ((stop - start - INTERVAL) / 60)


async def lookahead_reaction(seeder: PrefectSeeder, server: PrefectServer, variant: str) -> dict[str, float]:
    pool = f"ahead-react-{variant}-{uuid.uuid4().hex[:6]}"
    seeder.create_ecs_pool(pool)
    flow = seeder.create_flow("bench-scheduled")
    deployment = seeder._json("POST", "/deployments/", json={  # noqa: SLF001
        "name": pool, "flow_id": flow, "work_pool_name": pool, "entrypoint": "flows/demo.py:demo",
        "schedules": [{"schedule": {"interval": 3600, "anchor_date": utcnow().isoformat()}, "active": True}]})["id"]
    window = dt.timedelta(seconds=30)
    http = http_for(variant, Counter())
    client = PrefectClient(http, seeder.api_url)

    async def upcoming() -> int:
        now = utcnow()
        await client.observe_pool(pool, [], now, lookahead=window)
        reading, _ = await read_backlog(client, pool, [], now, lookahead=window, include_pending=False,
                                        per_queue=False, known=set())
        return reading.upcoming

    sampler = Sampler(upcoming)
    seen = sampler.seen
    await asyncio.sleep(8)
    figures: dict[str, float] = {}
    enters = utcnow() + dt.timedelta(seconds=8)
    await asyncio.to_thread(seeder.create_runs, deployment, 1, scheduled_state(enters + window))
    while utcnow() < enters:
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    figures["run entering the lookahead (no event)"] = await seen(t0, lambda n: n >= 1)
    base = sampler.last
    await asyncio.sleep(3)
    # A deployment change (its event: a schedule edit alone sends none, prefect 3.8 leaves
    # schedules out of the updated event's fields), then the scheduler's insert seconds later.
    seeder._request("PATCH", f"/deployments/{deployment}", json={  # noqa: SLF001
        "description": "every 10 s",
        "schedules": [{"schedule": {"interval": 10, "anchor_date": utcnow().isoformat()}, "active": True}]})
    await asyncio.sleep(3)
    await asyncio.to_thread(insert_like_the_scheduler, server, deployment, 3)
    t0 = time.monotonic()
    figures["scheduler insert after a deployment change (no event)"] = await seen(t0, lambda n: n > base)
    await sampler.stop()
    await http.aclose()
    return figures


async def main() -> None:
    policies = int(os.environ.get("BENCH_BUDGET_POLICIES", "20"))
    seconds = float(os.environ.get("BENCH_BUDGET_SECONDS", "420"))
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(pathlib.Path(tmp)) as server, \
            PrefectSeeder(server.api_url) as seeder:
        results: dict[str, dict[str, Any]] = {}
        for variant in ("before", "after"):
            print(f"[{variant}] reaction times ...", flush=True)
            react = await reaction(seeder, variant)
            print(f"[{variant}] {policies} idle policies for {seconds:.0f}s ...", flush=True)
            spent = await budget(seeder, variant, policies, seconds)
            ahead = await lookahead_reaction(seeder, server, variant)
            results[variant] = {**spent, **react, **ahead}
        if os.environ.get("BENCH_LOOKAHEAD", "1") != "0":
            ahead_seconds = float(os.environ.get("BENCH_LOOKAHEAD_SECONDS", "150"))
            print(f"lookahead budget, {policies} idle policies for {ahead_seconds:.0f}s x 3 ...", flush=True)
            spent_ahead = {mode: await lookahead_budget(seeder, mode, policies, ahead_seconds)
                           for mode in ("poll", "count", "cached")}
            print(f"\nPrefect requests/min per idle policy with lookahead {LOOKAHEAD} ({ahead_seconds:.0f}s, "
                  "no resync inside the window)")
            print(f"| {'poll':>10} | {'cache, count/cycle':>18} | {'cache, cached list':>18} |")
            print(f"|{'-' * 12}|{'-' * 20}|{'-' * 20}|")
            print(f"| {spent_ahead['poll']:>10.2f} | {spent_ahead['count']:>18.2f} | {spent_ahead['cached']:>18.2f} |")
    rows = [("Prefect requests/min per idle policy", "per_policy_min", "{:.2f}"),
            ("failed cycles", "failed", "{:.0f}"),
            ("event streams open", "streams", "{:.0f}")]
    rows += [(f"reaction: {k} (s)", k, "{:.2f}") for k in results["after"] if k not in {"per_policy_min", "failed", "streams"}]
    print(f"\nPrefect budget ({policies} idle policies, interval {INTERVAL:.0f}s, workers heartbeating every "
          f"{HEARTBEAT}s, {seconds:.0f}s; reactions with a cycle every 1 s)")
    print(f"| {'':44} | {'before (poll)':>14} | {'after (events)':>14} |")
    print(f"|{'-' * 46}|{'-' * 16}|{'-' * 16}|")
    for label, key, fmt in rows:
        print(f"| {label:44} | {fmt.format(results['before'][key]):>14} | {fmt.format(results['after'][key]):>14} |")


if __name__ == "__main__":
    asyncio.run(main())
