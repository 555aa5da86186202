"""Noisy neighbours: policies on a healthy Prefect server beside policies on a slow one.

One real Prefect server; the "slow server" is a loopback proxy in front of it
(hack/sandbox/tcp_proxy.py) that holds every request BENCH_SLOW_DELAY seconds (default 30,
beyond the 10 s request timeout: its requests hold their connections for their whole
timeout and its cycles their turns up to observe's 60 s deadline). BENCH_HEALTHY policies
(default 100) use the server directly and BENCH_SLOW (default 30) use the proxy, interval
30 s, for BENCH_SECONDS (default 90). The cycles run as the operator runs them, in one
process: a turn (16 per server, or in "before" 16 for everything), then ``run_cycle`` over
one shared ``PrefectHttp`` (50 connections: per server after, for everything before), the
next start on the policy's phase grid.

Variants (BENCH_VARIANTS, default before,after): before = the operator at BENCH_BASELINE
(default bc6f7df, main before per-server slots and turns), taken with ``git archive`` and
run in a child process; after = this checkout. Printed: the healthy policies' cycles,
failed cycles, p99 gap between a policy's starts and p99 lateness (start − slot); the slow
policies' cycles for scale.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
INTERVAL = 30.0
PER_SERVER = 16  # the operator's default PWO_MAX_CYCLES_IN_FLIGHT


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else (values[0] if values else 0.0)


async def child(api_url: str, slow_url: str, pools: list[str], healthy: int, slow: int, seconds: float) -> list[dict]:
    """One variant, in the process whose sys.path holds that variant's operator."""
    from prefect_workpool_operator.core import schedule
    from prefect_workpool_operator.prefect.http import PrefectHttp
    from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
    from sandbox.prefect_seed import utcnow

    try:  # after: turns per Prefect server
        from prefect_workpool_operator.fleet.keyed_turns import KeyedTurns, cycle_key
        keyed = KeyedTurns(PER_SERVER, 4 * PER_SERVER)
        turns_of = lambda spec: keyed.of(cycle_key(spec), cold=False)  # noqa: E731
        take = lambda turns: turns.take()  # noqa: E731
        follow = lambda started, offset: schedule.start_after_cycle(started, INTERVAL, offset, first=False)  # noqa: E731
    except ImportError:  # before: one set of turns for every policy
        from prefect_workpool_operator.fleet.turns import Turns
        one = Turns(PER_SERVER)
        turns_of = lambda spec: one  # noqa: E731
        take = lambda turns: turns.take(scheduled=True)  # noqa: E731
        follow = lambda started, offset: schedule.start_after_cycle(started, INTERVAL, offset, scheduled=True)  # noqa: E731

    logging.getLogger("prefect_workpool_operator").setLevel(logging.CRITICAL)
    http = PrefectHttp()
    cycles: list[dict] = []
    stop = time.time() + seconds

    async def policy(index: int, url: str, kind: str) -> None:
        name = f"{kind}-{index}"
        body = {"metadata": {"namespace": "bench", "name": name, "generation": 1, "uid": name,
                             "creationTimestamp": "2026-11-30T00:00:00Z"},
                "spec": {"prefect": {"apiUrl": url, "workPool": pools[index % len(pools)]}}}
        runtime = PolicyRuntime()
        offset = schedule.phase(name, INTERVAL)
        due = schedule.next_start(time.time(), INTERVAL, offset)  # the operator's start: spread over one interval
        turns = turns_of(body["spec"])
        while due < stop:
            await asyncio.sleep(max(0.0, due - time.time()))
            await take(turns)
            start = time.time()
            try:
                outcome = await run_cycle(body, http=http, secrets=None, runtime=runtime, now=utcnow())  # type: ignore[arg-type]
            finally:
                turns.release()
            body["status"] = outcome.status
            ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
            cycles.append({"kind": kind, "policy": index, "due": due, "start": start, "seconds": time.time() - start,
                           "ready": ready["status"] == "True"})
            due = follow(max(start, due), offset)

    tasks = [policy(i, api_url, "healthy") for i in range(healthy)] + [policy(i, slow_url, "slow") for i in range(slow)]
    # A slow policy's last cycle can outlast the window by its deadline: the healthy figures are what count.
    done, pending = await asyncio.wait([asyncio.ensure_future(t) for t in tasks], timeout=seconds + 90)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await http.aclose()
    return cycles


def summarize(cycles: list[dict]) -> dict[str, str]:
    healthy = [c for c in cycles if c["kind"] == "healthy"]
    gaps = []
    starts: dict[int, list[float]] = {}
    for c in sorted(healthy, key=lambda c: c["start"]):
        starts.setdefault(c["policy"], []).append(c["start"])
    for times in starts.values():
        gaps += [b - a for a, b in zip(times, times[1:])]
    slow = [c for c in cycles if c["kind"] == "slow"]
    return {
        "healthy cycles": str(len(healthy)),
        "healthy failed": str(sum(not c["ready"] for c in healthy)),
        "healthy p99 gap (s)": f"{p99(gaps):.1f}" if gaps else "-",
        "healthy p99 lateness (s)": f"{p99([c['start'] - c['due'] for c in healthy]):.1f}" if healthy else "-",
        "healthy mean cycle (s)": f"{statistics.fmean(c['seconds'] for c in healthy):.2f}" if healthy else "-",
        "slow cycles (failed)": f"{len(slow)} ({sum(not c['ready'] for c in slow)})",
    }


def baseline_source(workdir: pathlib.Path, revision: str) -> pathlib.Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "operator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive, check=True)
    return workdir / "operator"


def main() -> None:
    sys.path[:0] = [str(REPO / "hack")]
    from sandbox.prefect_seed import PrefectSeeder
    from sandbox.prefect_server import PrefectServer
    from sandbox.tcp_proxy import TcpProxy

    healthy = int(os.environ.get("BENCH_HEALTHY", "100"))
    slow = int(os.environ.get("BENCH_SLOW", "30"))
    seconds = float(os.environ.get("BENCH_SECONDS", "90"))
    delay = float(os.environ.get("BENCH_SLOW_DELAY", "30"))
    baseline = os.environ.get("BENCH_BASELINE", "bc6f7df")
    variants = os.environ.get("BENCH_VARIANTS", "before,after").split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(pathlib.Path(tmp) / "prefect") as server, \
            PrefectSeeder(server.api_url) as seeder:
        pools = [f"neighbours-{i}-{uuid.uuid4().hex[:4]}" for i in range(10)]
        for pool in pools:
            seeder.create_ecs_pool(pool)
        host, port = server.api_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        for variant in variants:
            src = baseline_source(pathlib.Path(tempfile.mkdtemp(dir=tmp)), baseline) if variant == "before" \
                else REPO / "operator"
            with TcpProxy(host, int(port), delay=delay) as proxy:
                print(f"[{variant}] {healthy} policies on a healthy server, {slow} on one answering in {delay:g}s, "
                      f"{seconds:.0f}s ...", flush=True)
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(REPO / "hack"), str(REPO)]))
                args = json.dumps([server.api_url, proxy.url("/api"), pools, healthy, slow, seconds])
                out = subprocess.run([sys.executable, __file__, "--child", args], env=env, check=True,
                                     capture_output=True, text=True).stdout
                results[variant] = summarize(json.loads(out.strip().splitlines()[-1]))
    columns = list(next(iter(results.values())))
    print(f"\nNoisy neighbours ({healthy} policies on a healthy Prefect, {slow} on one answering in {delay:g}s; "
          f"interval {INTERVAL:.0f}s, {seconds:.0f}s; before = {baseline})")
    print("| | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for column in columns:
        print(f"| {column} | " + " | ".join(r[column] for r in results.values()) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        api_url, slow_url, pools, healthy, slow, seconds = json.loads(sys.argv[2])
        print(json.dumps(asyncio.run(child(api_url, slow_url, pools, healthy, slow, seconds))))
    else:
        main()
