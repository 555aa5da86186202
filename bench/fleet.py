"""Fleet benchmark: the real operator process with N policies, before and after, side by side.

Starts a local control plane (kube-apiserver + etcd from `make tools`), a Prefect server
(on PostgreSQL when Debian's `postgresql` is installed or installable, else SQLite —
the table says which), moto, and a small recording proxy in front of Prefect (it sees
each cycle's `GET /work_pools/<pool>`, which is how cycle starts are timed). Then, for
each variant, one operator process watches its own namespace, N policies (interval
30 s, each with its AWS keys in a Secret, DesiredCount scaling of its own ECS service)
are applied at once, and the run is measured for BENCH_SECONDS:

- failed cycles (pwo_reconcile_errors), mean cycle time (pwo_reconcile_duration_seconds);
- p99 gap between a policy's consecutive cycle starts, against the interval: over the whole
  run, and between starts in the steady window (the fleet's first cycles queue for turns);
- the most cycle starts in one second, against the average per second;
- operator CPU (% of one core) and RSS, and RSS per policy over the idle process;
- Prefect requests per minute per (idle) policy, requests per second the server served,
  and the CPU of the Prefect server and its database (where the local server saturates
  first, these say so); Kubernetes API requests per policy-cycle (the API server's own
  apiserver_request_total, watches excluded); Events posted per policy in the first interval
  and in the steady window (Event POSTs and PATCHes: the operator is their only writer).

The proxy (HTTP and the event-stream websocket) runs in this process: its CPU is not the
operator's, but it shares the machine. Cycle starts come from the operator's
`pwo_cycle_started_timestamp_seconds` gauge (read every 2 s) where it has one, else from
each cycle's `GET /work_pools/<pool>`.

Steady-state figures skip the first interval (the fleet's first cycles).

Variants: "before" runs the operator source of BENCH_BASELINE (default a83d7ad, the
merge base of issue 11's first branch: the 0.1 code the issue measured wedging at 200),
taken with `git archive`, under its own CRD (its models forbid the fields newer CRDs
default, so under today's CRD every one of its cycles failed InvalidSpec), "after" this checkout, "after, shared identity" this checkout with
no Secret (the pod's identity), for memory per policy. Environment: BENCH_POLICIES
(default 200), BENCH_LARGE=1000 adds "after" runs at that size (own keys and shared
identity; the table then shows the RSS per extra policy between the two sizes), BENCH_SECONDS
(180), BENCH_BASELINE, BENCH_VARIANTS (comma list of before,after,shared,large,large-shared),
BENCH_PROFILE (a py-spy binary: each variant's steady window is sampled, its top functions
printed; py-spy is not a project dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO / "operator"), str(REPO)]

from sandbox.kube import LocalControlPlane, free_port  # noqa: E402
from sandbox.moto_server import MotoServer  # noqa: E402
from sandbox.prefect_seed import PrefectSeeder  # noqa: E402
from sandbox.prefect_server import PrefectServer  # noqa: E402
from sandbox.processes import stop_process_group  # noqa: E402
from tests.support.ecs_sandbox import REGION, EcsSandbox  # noqa: E402
from tests.support.kubectl import Kubectl  # noqa: E402

N = int(os.environ.get("BENCH_POLICIES", "200"))
LARGE = int(os.environ.get("BENCH_LARGE", "0"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "180"))
BASELINE = os.environ.get("BENCH_BASELINE", "a83d7ad")
# A py-spy binary: each variant's steady window is sampled and its top functions printed.
PROFILER = os.environ.get("BENCH_PROFILE") or None
VARIANTS = os.environ.get("BENCH_VARIANTS", "before,after,shared" + (",large,large-shared" if LARGE else "")).split(",")
INTERVAL = 30.0
CRD = REPO / "crds" / "prefectworkpoolpolicies.prefectops.dev.yaml"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- PostgreSQL for the Prefect server -------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@contextlib.contextmanager
def postgres(workdir: pathlib.Path) -> Iterator[str | None]:
    """A throw-away PostgreSQL; yields its asyncpg URL, or None (then Prefect uses SQLite)."""
    if _pg_bin("initdb") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing Debian postgresql (once)")
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        log("no PostgreSQL available: the Prefect server runs on SQLite")
        yield None
        return
    data = workdir / "pg"
    data.mkdir(parents=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        os.chmod(workdir, 0o755)
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run([*as_user, _pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "prefect"], check=True)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], check=False,
                       stdout=subprocess.DEVNULL)


# -- a recording proxy in front of Prefect ---------------------------------------------


class Proxy:
    """Forwards to Prefect and records (time, pool, method, path) of each request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.records: list[tuple[float, str, str]] = []  # (time, method, path)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)

    def _run(self) -> None:
        from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

        async def handle(request: web.Request) -> web.StreamResponse:
            self.records.append((time.time(), request.method, request.path))
            if request.headers.get("Upgrade", "").lower() == "websocket":
                return await stream(request)
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
            async with session.request(request.method, self.upstream + request.path_qs.removeprefix("/api"),
                                       data=body, headers=headers) as answer:
                data = await answer.read()
                return web.Response(status=answer.status, body=data,
                                    headers={k: v for k, v in answer.headers.items()
                                             if k.lower() in ("content-type", "retry-after")})

        async def stream(request: web.Request) -> web.StreamResponse:
            """Prefect's event stream (websocket), passed through message by message."""
            from aiohttp import WSMsgType

            inbound = web.WebSocketResponse(protocols=("prefect",))
            await inbound.prepare(request)
            headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
            url = (self.upstream + request.path_qs.removeprefix("/api")).replace("http://", "ws://", 1)
            async with session.ws_connect(url, protocols=("prefect",), headers=headers) as outbound:
                async def pump(source: Any, sink: Any) -> None:
                    async for message in source:
                        if message.type != WSMsgType.TEXT:
                            break
                        await sink.send_str(message.data)
                    await sink.close()

                await asyncio.gather(pump(inbound, outbound), pump(outbound, inbound), return_exceptions=True)
            return inbound

        async def main() -> None:
            nonlocal session
            session = ClientSession(connector=TCPConnector(limit=200), timeout=ClientTimeout(total=60))
            app = web.Application(client_max_size=50 * 2**20)
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await asyncio.Event().wait()

        session = None
        self._loop.run_until_complete(main())


SCRAPE_SECONDS = 15.0  # the full /metrics, as Prometheus would (the chart's ServiceMonitor: every 30 s)
STARTS_SECONDS = 2.0  # the start gauge alone: shorter than any gap between two starts (≥ 5 s), so none is missed


class Background:
    """A daemon thread running ``_run`` until ``stop()``; ``_stop`` is the event it waits on."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        raise NotImplementedError


class StartWatcher(Background):
    """Reads the operator's pwo_cycle_started_timestamp_seconds every STARTS_SECONDS (that gauge
    alone, `name[]`: a full scrape costs the operator CPU in proportion to all its series, so
    scraping everything that often would inflate the CPU figure): each new value is a cycle's
    exact start (two starts of one policy are at least 5 s apart, and each value stays exported
    until the next). The full /metrics is scraped every SCRAPE_SECONDS, as Prometheus would."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.starts: dict[str, set[float]] = defaultdict(set)

    def _run(self) -> None:
        full = time.monotonic()
        while not self._stop.wait(STARTS_SECONDS):
            with contextlib.suppress(OSError):
                if time.monotonic() - full >= SCRAPE_SECONDS:
                    full = time.monotonic()
                    scrape(self.url)
                for key, value in scrape(self.url + "?name[]=pwo_cycle_started_timestamp_seconds").items():
                    found = re.fullmatch(r'pwo_cycle_started_timestamp_seconds\{.*policy="([^"]+)".*\}', key)
                    if found:
                        self.starts[found.group(1)].add(value)


# -- figures ------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return parse_metrics(text)


def parse_metrics(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def total(metrics: dict[str, float], prefix: str, where: str = "") -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix) and where in k)


def cycle_buckets(metrics: dict[str, float]) -> str:
    """Shares of cycles by duration, from pwo_reconcile_duration_seconds' buckets (all policies)."""
    def upto(le: str) -> float:
        return total(metrics, "pwo_reconcile_duration_seconds_bucket", f'le="{le}"')
    count = upto("+Inf")
    if not count:
        return "n/a"
    return f"{100 * upto('0.1') / count:.0f} % / {100 * upto('1.0') / count:.0f} % / {100 * (count - upto('5.0')) / count:.0f} %"


def apiserver_requests(kubectl: Kubectl) -> float:
    """Requests to resources (not watches) the API server counted, all clients."""
    metrics = parse_metrics(kubectl("get", "--raw", "/metrics"))
    count = 0.0
    for key, value in metrics.items():
        if not key.startswith("apiserver_request_total{"):
            continue
        verb = re.search(r'verb="([A-Z]+)"', key)
        resource = re.search(r'resource="([^"]+)"', key)
        if verb and resource and verb.group(1) not in ("WATCH", "CONNECT") and \
                resource.group(1) in ("secrets", "prefectworkpoolpolicies", "events"):
            count += value
    return count


def events_posted(kubectl: Kubectl) -> float:
    """Event writes (POST, PATCH) the API server counted: the operator is their only writer."""
    metrics = parse_metrics(kubectl("get", "--raw", "/metrics"))
    return sum(value for key, value in metrics.items() if key.startswith("apiserver_request_total{")
               and 'resource="events"' in key and re.search(r'verb="(POST|PATCH)"', key))


def rejected_writes(kubectl: Kubectl) -> Counter[str]:
    """Writes to policies and Events the API server answered 4xx/5xx, by verb, resource and code
    (a rejected status PATCH means `kubectl describe` shows an older status than the cycle's)."""
    found: Counter[str] = Counter()
    for key, value in parse_metrics(kubectl("get", "--raw", "/metrics")).items():
        if not key.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
        if labels.get("resource") in ("prefectworkpoolpolicies", "events") and labels.get("code", "")[:1] in ("4", "5") \
                and labels.get("verb") in ("POST", "PATCH", "PUT", "DELETE"):
            what = labels["resource"] + ("/" + labels["subresource"] if labels.get("subresource") else "")
            found[f"{labels['verb']} {what} {labels['code']}"] += int(value)
    return found


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str] | None:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def server_cpu_seconds(roots: list[int]) -> float:
    """CPU of the Prefect server (its process group) and of PostgreSQL (the postmaster and its children)."""
    total_ticks = 0
    for pid in os.listdir("/proc"):
        fields = _stat(pid) if pid.isdigit() else None
        if fields is None:
            continue
        ppid, pgrp = int(fields[1]), int(fields[2])
        if pgrp in roots or ppid in roots or int(pid) in roots:
            total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Result:
    name: str
    policies: int
    figures: dict[str, str] = field(default_factory=dict)
    rss: float = 0.0  # MiB at the end


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


# -- one variant ----------------------------------------------------------------------------


def manifest(namespace: str, indices: range, api_url: str, moto_url: str, cluster: str, own_keys: bool,
             stale_runs: dict[str, object] | None = None) -> str:
    docs = []
    for i in indices:
        ecs = {"region": REGION, "cluster": cluster, "service": f"worker-{i}", "endpointUrl": moto_url}
        if own_keys:
            ecs["credentialsSecretRef"] = {"name": f"aws-{i}"}
            docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"aws-{i}", "namespace": namespace},
                         "stringData": {"aws-access-key-id": f"AKIABENCH{i:011d}",
                                        "aws-secret-access-key": f"bench-secret-{i:08d}-{'x' * 20}"}})
        docs.append({
            "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
            "metadata": {"name": f"policy-{i}", "namespace": namespace},
            "spec": {"prefect": {"apiUrl": api_url, "workPool": f"bench-pool-{i}"}, "interval": f"{INTERVAL:g}s",
                     "ecs": ecs, "scaling": {"mode": "DesiredCount", "minWorkers": 0, "maxWorkers": 2},
                     **({"staleRuns": stale_runs} if stale_runs else {})},
        })
    return "\n---\n".join(json.dumps(d) for d in docs)


def _unknown_keys(value: Any, schema: dict[str, Any], at: str = "") -> list[str]:
    """Paths in `value` that `schema` (an openAPIV3Schema) does not declare."""
    if isinstance(value, dict) and "properties" in schema:
        found = []
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{at}.{key}")
            else:
                found += _unknown_keys(item, schema["properties"][key], f"{at}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [k for item in value for k in _unknown_keys(item, schema["items"], at + "[]")]
    return []


def use_crd(kubectl: Kubectl, crd: str, namespace: str, sample: str) -> None:
    """Install `crd` (YAML text) and wait until the API server serves it: a dry-run create of a
    sample policy comes back with nothing this CRD does not declare. The baseline's models
    forbid unknown fields, so under the newer CRD's defaults every cycle of it was InvalidSpec."""
    import yaml

    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD.name.removesuffix('.yaml')}")
    schema = yaml.safe_load(crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    deadline = time.monotonic() + 60
    while True:
        answer = json.loads(kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", stdin=sample))
        unknown = _unknown_keys({"spec": answer["spec"]}, schema)
        if not unknown:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API server still serves another CRD: {unknown}")
        time.sleep(0.5)


def run_variant(name: str, n: int, *, src: pathlib.Path | None, own_keys: bool, kubectl: Kubectl, proxy: Proxy,
                moto: MotoServer, cluster: str, workdir: pathlib.Path, server_roots: list[int], crd: str) -> Result:
    namespace = f"bench-{name.replace(' ', '-').replace(',', '')}-{n}"
    kubectl("create", "namespace", namespace)
    use_crd(kubectl, crd, namespace, manifest(namespace, range(1), proxy.api_url, moto.endpoint_url, cluster, False))
    port = free_port()
    env = {
        **os.environ, "KUBECONFIG": kubectl.kubeconfig, "PWO_NAMESPACES": namespace, "PWO_METRICS_PORT": str(port),
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
    }
    env.pop("PWO_VERBOSE", None)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = workdir / f"operator-{namespace}.log"
    log(f"{name}: starting the operator ({'baseline ' + BASELINE if src else 'this checkout'}), {n} policies")
    with out.open("ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "prefect_workpool_operator"], env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    sampler: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(metrics_url)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"operator did not start; see {out}") from None
                time.sleep(0.5)
        time.sleep(3)
        idle_rss = rss_mib(proc.pid)
        watcher = StartWatcher(metrics_url)
        watcher.start()
        events0, rejected0 = events_posted(kubectl), rejected_writes(kubectl)
        for first in range(0, n, 100):  # kubectl calls time out after 60 s: 1,000 at once came close
            kubectl.apply(manifest(namespace, range(first, min(first + 100, n)), proxy.api_url, moto.endpoint_url,
                                   cluster, own_keys))
        applied = time.time()
        log(f"{name}: {n} policies applied; measuring for {SECONDS:.0f}s")
        time.sleep(INTERVAL)
        steady = time.time()
        cpu0, kube0, metrics0 = cpu_seconds(proc.pid), apiserver_requests(kubectl), scrape(metrics_url)
        events1 = events_posted(kubectl)
        server0 = server_cpu_seconds(server_roots)
        profile = workdir / f"profile-{namespace}.txt"
        sampler = subprocess.Popen(
            [PROFILER, "record", "--pid", str(proc.pid), "--rate", "50", "--nonblocking", "--format", "raw",
             "--duration", str(int(applied + SECONDS - time.time())), "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if PROFILER else None
        peak = 0.0
        while time.time() < applied + SECONDS:
            time.sleep(5)
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited; see {out}")
            peak = max(peak, rss_mib(proc.pid))
        end = time.time()
        cpu1, kube1, metrics1 = cpu_seconds(proc.pid), apiserver_requests(kubectl), scrape(metrics_url)
        events2, rejected = events_posted(kubectl), rejected_writes(kubectl) - rejected0
        server1 = server_cpu_seconds(server_roots)
        rss = rss_mib(proc.pid)
    finally:
        with contextlib.suppress(NameError):
            watcher.stop()
        if sampler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                sampler.wait(30)
        stop_process_group(proc, grace=10)
        log_lines = sum(1 for _ in out.open("rb"))
    starts: dict[str, list[float]] = defaultdict(list)
    # An operator serving reads from its event-stream cache sends no request at most cycle
    # starts: time them by its pwo_cycle_started_timestamp_seconds gauge where it has one.
    timed_by_gauge = bool(watcher.starts)
    for policy, times in watcher.starts.items():
        starts[policy.replace("policy-", "bench-pool-")] = sorted(t for t in times if t >= applied)
    requests_steady = 0
    for t, method, path in list(proxy.records):
        if t < applied:
            continue
        match = re.fullmatch(r"/api/work_pools/(bench-pool-\d+)", path)
        if not timed_by_gauge and method == "GET" and match and int(match.group(1).rsplit("-", 1)[1]) < n:
            starts[match.group(1)].append(t)
        if steady <= t <= end:
            requests_steady += 1
    gaps = [b - a for times in starts.values() for a, b in zip(times, times[1:])]
    steady_gaps = [b - a for times in starts.values() for a, b in zip(times, times[1:]) if a >= steady]
    per_second = Counter(int(t) for times in starts.values() for t in times if steady <= t <= end)
    seconds_in_window = max(int(end) - int(steady), 1)
    average = sum(per_second.values()) / seconds_in_window
    cycles = total(metrics1, "pwo_reconcile_duration_seconds_count") - total(metrics0, "pwo_reconcile_duration_seconds_count")
    all_cycles = total(metrics1, "pwo_reconcile_duration_seconds_count")
    failed = total(metrics1, "pwo_reconcile_errors_total")
    mean = total(metrics1, "pwo_reconcile_duration_seconds_sum") / all_cycles if all_cycles else float("nan")
    minutes = (end - steady) / 60
    figures = {
        "cycles (all / steady)": f"{all_cycles:.0f} / {cycles:.0f}",
        "failed cycles": f"{failed:.0f}",
        "p99 gap between starts, all / steady (s)": f"{p99(gaps):.1f} / {p99(steady_gaps):.1f} (interval {INTERVAL:g})",
        "policies that ever started a cycle": f"{len(starts)} / {n}",
        "max starts in 1 s / average": f"{max(per_second.values(), default=0)} / {average:.1f}",
        "mean cycle (s)": f"{mean:.2f}",
        "cycles ≤ 0.1 s / ≤ 1 s / > 5 s": cycle_buckets(metrics1),
        "operator CPU (% of a core)": f"{100 * (cpu1 - cpu0) / (end - steady):.1f}",
        "RSS end / peak (MiB)": f"{rss:.0f} / {max(peak, rss):.0f}",
        "RSS per policy (MiB)": f"{(rss - idle_rss) / n:.2f}",
        "Prefect requests/min per idle policy": f"{requests_steady / minutes / n:.1f}",
        "Prefect requests/s served (all policies)": f"{requests_steady / (end - steady):.0f}",
        "Prefect server + DB CPU (% of a core)": f"{100 * (server1 - server0) / (end - steady):.0f}",
        "Events posted per policy, first interval / steady": f"{(events1 - events0) / n:.1f} / {(events2 - events1) / n:.1f}",
        "K8s API requests per policy-cycle": f"{(kube1 - kube0) / cycles:.2f}" if cycles else "n/a",
        "K8s writes rejected (verb resource code: count)": ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items()))
        or "none",
        "log lines per policy per minute": f"{log_lines / n / ((end - applied) / 60):.2f}",
    }
    log(f"{name}: " + "; ".join(f"{k}: {v}" for k, v in figures.items()))
    if PROFILER and profile.exists():
        print_profile(name, profile)
    return Result(name, n, figures, rss)


def per_extra_policy(results: list[Result]) -> None:
    """Memory per extra policy: the RSS slope between the two sizes of one variant."""
    row = "RSS per extra policy (MiB)"
    for result in results:
        smaller = [r for r in results if r.name == result.name and r.policies < result.policies]
        result.figures[row] = (f"{(result.rss - smaller[0].rss) / (result.policies - smaller[0].policies):.2f}"
                               f" (from {smaller[0].policies})" if smaller else "")


def print_profile(name: str, raw: pathlib.Path, top: int = 25) -> None:
    """py-spy's collapsed stacks -> the functions holding the most samples, inclusive and self."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    print(f"\nprofile of {name}: {samples} samples (at 50/s; idle samples excluded by py-spy), raw stacks in {raw}")
    for title, table in (("inclusive", inclusive), ("self", own)):
        print(f"  top {title}:")
        for frame, n in table.most_common(top):
            print(f"    {100 * n / max(samples, 1):5.1f} %  {frame[:150]}")


def print_table(results: list[Result], database: str) -> None:
    rows = list(results[0].figures)
    names = [f"{r.name} ({r.policies})" for r in results]
    width = max(len(r) for r in rows) + 2
    cols = [max(len(names[i]), *(len(r.figures.get(k, "")) for k in rows)) + 2 for i, r in enumerate(results)]
    print()
    print(f"Fleet benchmark: interval {INTERVAL:g}s, {SECONDS:.0f}s per run, Prefect on {database}, "
          f"{os.cpu_count()} CPUs (shared)")
    print("".ljust(width) + "".join(n.ljust(c) for n, c in zip(names, cols)))
    for row in rows:
        print(row.ljust(width) + "".join(r.figures.get(row, "").ljust(c) for r, c in zip(results, cols)))


def _built_tools() -> pathlib.Path | None:
    """The cached kube-apiserver and etcd when `make tools` built them (helm is not needed here)."""
    cache = pathlib.Path(os.environ.get("PWO_TOOLS_CACHE") or pathlib.Path(
        os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "prefect-workpool-operator" / "bin")
    return cache if all((cache / name).exists() for name in ("kube-apiserver", "etcd")) else None


def baseline_crd(revision: str = BASELINE) -> str:
    """The CRD the baseline was generated with (its models reject fields newer CRDs default)."""
    return subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:crds/{CRD.name}"], check=True,
                          capture_output=True, text=True).stdout


def baseline_source(workdir: pathlib.Path, revision: str = BASELINE) -> pathlib.Path:
    target = workdir / "baseline"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "operator"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "operator"


def main() -> None:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pwo-fleet-"))
    log(f"work dir {workdir}")
    largest = max(N, LARGE)
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres(workdir))
        database = "PostgreSQL" if database_url else "SQLite"
        server = stack.enter_context(PrefectServer(
            workdir / "prefect", database_url=database_url,
            services={"LATE_RUNS": False, "EVENT_PERSISTER": False}, log=log))
        moto = stack.enter_context(MotoServer(workdir / "moto"))
        plane = stack.enter_context(LocalControlPlane(workdir / "kube", bin_dir=_built_tools()))
        kubectl = Kubectl(plane.kubeconfig)
        log(f"seeding {largest} work pools and ECS services")
        with PrefectSeeder(server.api_url) as seeder:
            for i in range(largest):
                seeder.create_ecs_pool(f"bench-pool-{i}")
        sandbox = EcsSandbox(moto)
        cluster = sandbox.cluster()
        for i in range(largest):
            sandbox.service(cluster, f"worker-{i}")
        proxy = Proxy(server.api_url)
        proxy.start()
        roots = [server._proc.pid] if server._proc else []
        if database_url:
            roots.append(int((workdir / "pg" / "postmaster.pid").read_text().split()[0]))
        plan = {
            "before": ("before", N, baseline_source(workdir) if "before" in VARIANTS else None, True),
            "after": ("after", N, None, True),
            "shared": ("after, shared identity", N, None, False),
            "large": ("after", LARGE, None, True),
            "large-shared": ("after, shared identity", LARGE, None, False),
        }
        results = []
        for key in VARIANTS:
            name, n, src, own = plan[key]
            if key == "before" and src is None:
                continue
            results.append(run_variant(name, n, src=src, own_keys=own, kubectl=kubectl, proxy=proxy, moto=moto,
                                       cluster=cluster, workdir=workdir, server_roots=roots,
                                       crd=baseline_crd() if key == "before" else CRD.read_text()))
        per_extra_policy(results)
        print_table(results, database)
    log(f"logs in {workdir}")


if __name__ == "__main__":
    main()
