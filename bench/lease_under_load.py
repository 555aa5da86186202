"""Leases lost under load: the operator process, leader election on, a fleet all recovering at once.

Issue 20: with 1,000 policies recovering at once, the only replica's Lease renewals waited
behind its own Kubernetes traffic and event loop past the renew deadline; it dropped its
leadership and cancelled its running cycles. This benchmark runs that fleet, before and
after, side by side, and counts what leadership it lost.

Set-up (once): a local control plane (kube-apiserver + etcd from `make tools`), a Prefect
server on PostgreSQL (Debian's `postgresql`), moto. N work pools, each with one deployment
and BENCH_LEASE_STALE (1) PENDING runs labelled as claimed by a worker that never
heartbeats (the claimer is gone), made stale by backdating them two hours in the database
(FACTS.md allows it for benchmarks); one ECS service per pool on moto (no task runs).

Each variant: its own namespace, where N policies (interval 30 s, own AWS keys in a Secret,
DesiredCount scaling, `staleRuns` on) are applied; then the operator process starts with
leader election ON, its Lease in that namespace (`PWO_LEASE_NAMESPACE`, identity `POD_NAME`,
as the chart runs it), the only replica — as after a restart or an outage: it finds the
whole fleet at once, and every policy's first cycle (within the first interval, at its
phase) finds a stale run (first observation), its next one an interval later recovers it (a
guarded `bulk_set_state`) and writes status and Events. Before the next variant the runs are
put back in PENDING (forced: this is seeding) and backdated again, and the ECS services back
to 0 tasks. Measured over BENCH_LEASE_SECONDS from the moment the operator holds its Lease
(log lines only up to the end of that window: stopping the operator cancels cycles too):

- Leases lost: the operator's "is no longer leader" log lines, and the `pwo_leader` gauge
  dropping from 1 to 0 (read every 0.5 s);
- cycles cancelled: "cycle cancelled" log lines (nothing deletes or suspends a policy
  here, so each is a cycle cancelled because leadership was lost);
- the longest renewal gap: the Lease's `spec.renewTime` read from the API server every
  0.5 s by this process (its own client): the longest time between two successive
  renewals, or from the last renewal to the end of the window; holder changes;
- a control: this process renews a Lease of its own every 2 s (2 s request timeout, its own
  connection, nothing else to do): its longest gap is what the API server alone caused;
- failed cycles (`pwo_reconcile_errors_total`), p99 gap between a policy's consecutive cycle
  starts (`pwo_cycle_started_timestamp_seconds`, read every 2 s as in bench/fleet.py), runs
  recovered (runs named Requeued in Prefect), operator CPU.

The operator authenticates as a pod does, with a ServiceAccount token (bound to cluster-admin
here; tests/e2e/test_helm.py proves the chart's own rules), so API Priority and Fairness
classifies its requests as a cluster classifies them: `service-accounts`, the `workload-low`
queues. The benchmark's own readers and its control Lease use the admin credential (exempt).

Variants: "before" runs the operator source of BENCH_LEASE_BASELINE (default f20d4d3, the
commit before the election moved to its own thread, loop and connection; `git archive`,
under its own CRD), "after" this checkout, "chart" this checkout with the chart's Lease
FlowSchema applied (`helm template --show-only templates/flowschema.yaml`: its Lease
requests in the `leader-election` priority level). Environment: BENCH_LEASE_POLICIES
(default 1000), BENCH_LEASE_SECONDS (180), BENCH_LEASE_STALE (stale runs per pool, 1),
BENCH_LEASE_BASELINE, BENCH_LEASE_VARIANTS (before,after,chart). The machine is shared: the
operator competes for the cores with the API server, etcd, Prefect, PostgreSQL and moto, as
the issue's single replica did with its neighbours.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "operator"), str(REPO)]

from bench.fleet import (  # noqa: E402
    Background, StartWatcher, _built_tools, baseline_crd, baseline_source, cpu_seconds, log, p99, postgres, scrape, total, use_crd,
)
from bench.fleet import manifest as fleet_manifest  # noqa: E402
from bench.recovery_fleet import backdate  # noqa: E402
from sandbox.kube import LocalControlPlane, free_port  # noqa: E402
from sandbox.moto_server import MotoServer  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402
from sandbox.processes import stop_process_group  # noqa: E402
from tests.support.ecs_sandbox import REGION, EcsSandbox  # noqa: E402
from tests.support.kubectl import Kubectl, service_account_kubeconfig  # noqa: E402

N = int(os.environ.get("BENCH_LEASE_POLICIES", "1000"))
SECONDS = float(os.environ.get("BENCH_LEASE_SECONDS", "180"))
STALE = int(os.environ.get("BENCH_LEASE_STALE", "1"))
BASELINE = os.environ.get("BENCH_LEASE_BASELINE", "f20d4d3")
VARIANTS = os.environ.get("BENCH_LEASE_VARIANTS", "before,after,chart").split(",")
INTERVAL = 30.0
LEASE_NAME = "prefect-workpool-operator"
GONE_WORKER = "ECSWorker gone-0000"  # named as the claimer of every stale run; never heartbeats
SAMPLE_SECONDS = 0.5


# -- what the API server says about the Lease, and what the operator says about leadership --------


class LeaseSampler(Background):
    """Reads the Lease every SAMPLE_SECONDS on its own client (not the operator's): renewals by
    their `renewTime`, holder changes; and the operator's `pwo_leader` gauge, its drops to 0."""

    def __init__(self, kubeconfig: str, namespace: str, metrics_url: str) -> None:
        from kubernetes import client, config

        super().__init__()
        self.api = client.CoordinationV1Api(config.new_client_from_config(config_file=kubeconfig))
        self.namespace, self.metrics_url = namespace, metrics_url
        self.renewals: list[dt.datetime] = []
        self.holders: list[str] = []
        self.gauge: list[float] = []
        self.read_errors: list[tuple[float, str]] = []  # (time, what): reads this bench could not make

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                spec = self.api.read_namespaced_lease(LEASE_NAME, self.namespace, _request_timeout=5).spec
                if spec.renew_time and (not self.renewals or spec.renew_time != self.renewals[-1]):
                    self.renewals.append(spec.renew_time)
                holder = spec.holder_identity or ""
                if not self.holders or holder != self.holders[-1]:
                    self.holders.append(holder)
            except Exception as exc:  # counted: a busy API server answering late is part of the picture
                self.read_errors.append((time.time(), f"{type(exc).__name__} {getattr(exc, 'status', '')}".strip()))
            with contextlib.suppress(OSError):
                value = scrape(self.metrics_url + "?name[]=pwo_leader")
                found = [v for k, v in value.items() if k.startswith("pwo_leader")]
                if found and (not self.gauge or found[0] != self.gauge[-1]):
                    self.gauge.append(found[0])

    def drops(self) -> int:
        return sum(1 for a, b in zip(self.gauge, self.gauge[1:]) if a >= 1 and b < 1)

    def longest_gap(self, since: float, until: float) -> float:
        """Longest time without a renewal in [since, until] (epoch seconds), by the Lease's renewTime."""
        times = [since] + [t.timestamp() for t in self.renewals if since <= t.timestamp() <= until] + [until]
        return max(b - a for a, b in zip(times, times[1:]))


class ControlLease(Background):
    """A control: this process renews a Lease of its own every 2 s with the operator's 2 s
    request timeout, on its own connection, while it has nothing else to do. Its longest gap
    says how long the API server itself took to accept a Lease write meanwhile; what the
    operator's gap exceeds it by is the operator's own doing."""

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        from kubernetes import client, config

        super().__init__()
        self.client = client
        self.api = client.CoordinationV1Api(config.new_client_from_config(config_file=kubeconfig))
        self.namespace = namespace
        self.sent: list[float] = []  # when each accepted write was sent
        self.slowest = 0.0
        self.failed = 0

    def _run(self) -> None:
        c = self.client
        lease = None
        while not self._stop.is_set():
            sent = time.time()
            try:
                now = dt.datetime.now(dt.timezone.utc)
                if lease is None:
                    try:
                        lease = self.api.read_namespaced_lease("bench-control", self.namespace, _request_timeout=2)
                    except c.ApiException as exc:
                        if exc.status != 404:
                            raise
                        lease = self.api.create_namespaced_lease(self.namespace, c.V1Lease(
                            metadata=c.V1ObjectMeta(name="bench-control"),
                            spec=c.V1LeaseSpec(holder_identity="bench", lease_duration_seconds=15, renew_time=now)),
                            _request_timeout=2)
                        self.sent.append(sent)
                        continue
                lease.spec.renew_time = now
                lease = self.api.replace_namespaced_lease("bench-control", self.namespace, lease, _request_timeout=2)
                self.sent.append(sent)
                self.slowest = max(self.slowest, time.time() - sent)
            except Exception:
                self.failed += 1
                lease = None
            finally:
                self._stop.wait(max(0.0, sent + 2 - time.time()))

    def longest_gap(self, since: float, until: float) -> float:
        times = [since] + [t for t in self.sent if since <= t <= until] + [until]
        return max(b - a for a, b in zip(times, times[1:]))


# -- seeding ---------------------------------------------------------------------------------------


def seed(api_url: str, n: int) -> list[str]:
    """N pools, a deployment each, STALE PENDING runs each claimed by a gone worker; the run ids."""
    def one(indices: range) -> list[str]:
        ids: list[str] = []
        with PrefectSeeder(api_url, timeout=120) as seeder:
            for i in indices:
                pool = f"bench-pool-{i}"
                seeder.create_ecs_pool(pool)
                deployment = seeder.create_deployment(pool, name=f"d-{i}")
                ids += seeder.create_runs_bulk(deployment, STALE, {"type": "PENDING"}, labels={
                    "prefect.worker.name": GONE_WORKER, "prefect.worker.type": "ecs", "prefect.work-pool.name": pool})
        return ids

    chunks = [range(k, n, 4) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        return [run_id for ids in pool.map(one, chunks) for run_id in ids]


def pending_again(api_url: str, ids: list[str]) -> None:
    """Every run back to PENDING (forced: this is seeding), 50 per call, 4 calls at once."""
    def one(batch: list[str]) -> None:
        with PrefectSeeder(api_url, timeout=120) as seeder:
            seeder._json("POST", "/flow_runs/bulk_set_state", json={
                "flow_runs": {"id": {"any_": batch}}, "state": {"type": "PENDING"}, "force": True, "limit": 50})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, [ids[i : i + 50] for i in range(0, len(ids), 50)]))


def count_runs(api_url: str, state: dict[str, object]) -> int:
    with PrefectSeeder(api_url, timeout=120) as seeder:
        return seeder.count_runs({"flow_runs": {"state": state}})


def manifest(namespace: str, indices: range, api_url: str, moto_url: str, cluster: str) -> str:
    """bench/fleet.py's policies (own AWS keys in a Secret each), with staleRuns on."""
    return fleet_manifest(namespace, indices, api_url, moto_url, cluster, own_keys=True,
                          stale_runs={"pendingTimeout": "10m"})


# -- one variant -----------------------------------------------------------------------------------


def pod_credentials(kubectl: Kubectl, namespace: str, workdir: pathlib.Path, *, flow_schema: bool) -> str:
    """A kubeconfig with a ServiceAccount token, as the pod has; with ``flow_schema``, the
    chart's Lease FlowSchema for that ServiceAccount. Returns the kubeconfig's path."""
    kubectl("-n", namespace, "create", "serviceaccount", "operator")
    kubectl("create", "clusterrolebinding", f"{namespace}-operator", "--clusterrole=cluster-admin",
            f"--serviceaccount={namespace}:operator")
    if flow_schema:
        rendered = subprocess.run(
            [str(_built_tools() / "helm"), "template", "pwo", str(REPO / "charts" / "prefect-workpool-operator"),
             "-n", namespace, "--set", "serviceAccount.name=operator", "--show-only", "templates/flowschema.yaml"],
            check=True, capture_output=True, text=True).stdout
        kubectl.apply(rendered)
    return service_account_kubeconfig(kubectl, namespace, "operator", workdir / f"{namespace}.kubeconfig").kubeconfig


@dataclass
class Result:
    name: str
    figures: dict[str, str] = field(default_factory=dict)


def run_variant(name: str, src: pathlib.Path | None, crd: str, *, kubectl: Kubectl, api_url: str, moto_url: str,
                cluster: str, workdir: pathlib.Path) -> Result:
    namespace = f"lease-{name}"
    identity = f"bench-operator-{name}"
    kubectl("create", "namespace", namespace)
    sample = manifest(namespace, range(1), api_url, moto_url, cluster).split("\n---\n")[-1]  # the policy alone
    use_crd(kubectl, crd, namespace, sample)
    port = free_port()
    credentials = pod_credentials(kubectl, namespace, workdir, flow_schema=name == "chart")
    env = {
        **os.environ, "KUBECONFIG": credentials, "PWO_NAMESPACES": namespace, "PWO_METRICS_PORT": str(port),
        "PWO_LEADER_ELECTION": "1", "PWO_LEASE_NAMESPACE": namespace, "POD_NAME": identity, "POD_NAMESPACE": namespace,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
    }
    for key in ("PWO_VERBOSE", "PWO_LEASE_NAME", "PWO_SHARD", "PWO_LEASE_SECONDS", "PWO_RENEW_DEADLINE_SECONDS",
                "PWO_RETRY_SECONDS"):
        env.pop(key, None)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = workdir / f"operator-{namespace}.log"
    for first in range(0, N, 100):  # before the operator starts: kubectl calls time out after 60 s
        kubectl.apply(manifest(namespace, range(first, min(first + 100, N)), api_url, moto_url, cluster))
    log(f"{name}: {N} policies applied; starting the operator ({'baseline ' + BASELINE if src else 'this checkout'}), "
        f"Lease {namespace}/{LEASE_NAME}")
    with out.open("ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "prefect_workpool_operator"], env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    lease = LeaseSampler(kubectl.kubeconfig, namespace, metrics_url)
    watcher = StartWatcher(metrics_url)
    control = ControlLease(kubectl.kubeconfig, namespace)
    try:
        deadline = time.monotonic() + 90
        lease.start()
        watcher.start()
        control.start()
        while not (lease.holders and lease.holders[-1] == identity):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the operator did not take its Lease; see {out}")
            time.sleep(0.5)
        started = time.time()
        cpu0 = cpu_seconds(proc.pid)
        log(f"{name}: the operator holds its Lease; measuring for {SECONDS:.0f}s")
        while time.time() < started + SECONDS:
            time.sleep(2)
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited; see {out}")
        end = time.time()
        cpu1, metrics = cpu_seconds(proc.pid), scrape(metrics_url)
        measured = out.stat().st_size  # what it logged before it was stopped (a stop cancels cycles too)
    finally:
        watcher.stop()
        lease.stop()
        control.stop()
        stop_process_group(proc, grace=10)
    text = out.read_bytes()[:measured].decode(errors="replace")
    lost = len(re.findall(r"is no longer leader", text))
    cancelled = len(re.findall(r"cycle cancelled", text))
    starts = {p: sorted(t for t in ts if t >= started) for p, ts in watcher.starts.items()}
    gaps = [b - a for times in starts.values() for a, b in zip(times, times[1:])]
    cycles = total(metrics, "pwo_reconcile_duration_seconds_count")
    failed = total(metrics, "pwo_reconcile_errors_total")
    recovered = count_runs(api_url, {"name": {"any_": ["Requeued"]}})
    whys = sorted(set(re.findall(r"is no longer leader \(([^)]*)\)", text)))
    figures = {
        "Leases lost (\"no longer leader\" lines)": str(lost),
        "leader gauge drops 1 → 0": str(lease.drops()),
        "cycles cancelled by lost leadership": str(cancelled),
        "longest renewal gap (s; lease 15, renew deadline 10)": f"{lease.longest_gap(started, end):.1f}",
        "control: an idle process's Lease, longest gap (s) / failed writes": f"{control.longest_gap(started, end):.1f}"
        f" / {control.failed}",
        "Lease holders seen": str(len(lease.holders)),
        "failed cycles": f"{failed:.0f}",
        "p99 gap between cycle starts (s; interval 30)": f"{p99(gaps):.1f}",
        "cycles / policies that started one": f"{cycles:.0f} / {len(starts)}",
        "runs recovered (of stale)": f"{recovered} / {N * STALE}",
        "operator CPU (% of a core)": f"{100 * (cpu1 - cpu0) / (end - started):.0f}",
        "renewals seen / bench's Lease reads that failed": f"{sum(1 for t in lease.renewals if started <= t.timestamp() <= end)}"
        f" / {sum(1 for t, _ in lease.read_errors if t >= started)}",
    }
    log(f"{name}: " + "; ".join(f"{k}: {v}" for k, v in figures.items()) + (f"; why: {whys}" if whys else ""))
    return Result(name, figures)


def print_table(results: list[Result], seconds_setup: float) -> None:
    rows = list(results[0].figures)
    suffix = {"before": f" ({BASELINE})", "after": " (this checkout)", "chart": " (+ FlowSchema)"}
    names = [r.name + suffix.get(r.name, "") for r in results]
    width = max(len(r) for r in rows) + 2
    cols = [max(len(names[i]), *(len(r.figures[k]) for k in rows)) + 2 for i, r in enumerate(results)]
    print()
    print(f"Leases lost under load: {N} policies, each pool with {STALE} stale PENDING run(s) of a "
          f"gone claimer, applied before the only replica starts (leader election on); interval {INTERVAL:g}s, {SECONDS:.0f}s per run; Prefect on "
          f"PostgreSQL; {os.cpu_count()} CPUs (shared); set-up {seconds_setup:.0f}s")
    print("".ljust(width) + "".join(n.ljust(c) for n, c in zip(names, cols)))
    for row in rows:
        print(row.ljust(width) + "".join(r.figures[row].ljust(c) for r, c in zip(results, cols)))


def main() -> None:
    began = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pwo-lease-"))
    log(f"work dir {workdir}")
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres(workdir))
        if database_url is None:
            raise SystemExit("this benchmark needs PostgreSQL (Debian's postgresql)")
        server = stack.enter_context(PrefectServer(
            workdir / "prefect", database_url=database_url,
            services={"LATE_RUNS": False, "EVENT_PERSISTER": False}, log=log))
        moto = stack.enter_context(MotoServer(workdir / "moto"))
        plane = stack.enter_context(LocalControlPlane(workdir / "kube", bin_dir=_built_tools()))
        kubectl = Kubectl(plane.kubeconfig)
        log(f"seeding {N} work pools with {STALE} stale run(s) each, and {N} ECS services")
        ids = seed(server.api_url, N)
        sandbox = EcsSandbox(moto)
        cluster = sandbox.cluster()
        for i in range(N):
            sandbox.service(cluster, f"worker-{i}")
        setup = time.monotonic() - began
        log(f"seeded {len(ids)} runs in {setup:.0f}s")
        results = []
        for k, name in enumerate(VARIANTS):
            if k:  # the previous variant recovered them and may have scaled the services
                pending_again(server.api_url, ids)
                for i in range(N):
                    sandbox.ecs.update_service(cluster=cluster, service=f"worker-{i}", desiredCount=0)
            backdate(database_url, ids)
            stale = count_runs(server.api_url, {"type": {"any_": ["PENDING"]}})
            log(f"{name}: {stale} PENDING runs, backdated two hours")
            src = baseline_source(workdir, BASELINE) if name == "before" else None
            crd = baseline_crd(BASELINE) if name == "before" else (REPO / "crds" / "prefectworkpoolpolicies.prefectops.dev.yaml").read_text()
            results.append(run_variant(name, src, crd, kubectl=kubectl, api_url=server.api_url,
                                       moto_url=moto.endpoint_url, cluster=cluster, workdir=workdir))
        print_table(results, setup)
    log(f"logs in {workdir}; the whole benchmark took {time.monotonic() - began:.0f}s")


if __name__ == "__main__":
    main()
