"""More than one replica: operator processes with their own pod identity elect one leader
per shard on a real API server's Lease; exactly one process cycles each policy."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import pathlib
import re
import subprocess
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
import yaml
from kubernetes.aio.client import Configuration
from kubernetes.aio.config import load_kube_config_from_dict

from prefect_workpool_operator.kube.api import KubeClient
from prefect_workpool_operator.kube.lease import LeaseElector
from sandbox.processes import kill_process_group, operator_process, stop_process_group
from tests.support.names import unique
from tests.support.kubectl import Kubectl, wait_for
from tests.support.cuttable_proxy import CuttableProxy

pytestmark = pytest.mark.e2e

SHARD_LABEL = "prefectops.dev/shard"
CYCLE = re.compile(r"^\[(?P<time>[\d\- :,]+)\].*cycle of (?P<ns>\S+)/(?P<name>\S+) by (?P<pod>\S+) in shard (?P<shard>\S+)")
FIGURES: dict[str, float] = {}


@dataclass
class Replica:
    pod: str
    shard: str
    log: pathlib.Path
    proc: subprocess.Popen[bytes]

    def cycles(self) -> list[tuple[float, str, str]]:
        """(wall time, policy name, pod) of every cycle this process started."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = CYCLE.match(line)
            if m:
                when = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append((when, m["name"], m["pod"]))
        return found


@contextlib.contextmanager
def replicas(kubectl: Kubectl, namespace: str, tmp: pathlib.Path, shards: dict[str, int]) -> Iterator[list[Replica]]:
    """Operator processes: ``shards`` maps a shard name ("" = default) to its replica count."""
    with contextlib.ExitStack() as stack:
        started = []
        for shard, count in shards.items():
            for i in range(count):
                pod = f"op-{shard or 'default'}-{i}"
                env = {
                    **os.environ, "KUBECONFIG": kubectl.kubeconfig, "PWO_NAMESPACES": namespace,
                    "PWO_LEASE_NAMESPACE": namespace, "POD_NAME": pod, "PWO_SHARD": shard,
                    "PWO_TICK_SECONDS": "1", "PWO_VERBOSE": "1", "PWO_LOG_FORMAT": "full", "PWO_METRICS_PORT": "0",
                }
                log = tmp / f"{pod}.log"
                proc = stack.enter_context(operator_process(env, log))
                started.append(Replica(pod, shard or "default", log, proc))
        yield started


def policies(ns: Kubectl, api_url: str, names: list[str], shard: str | None = None) -> None:
    labels = {SHARD_LABEL: shard} if shard else {}
    docs = [{
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
        "metadata": {"name": name, "labels": labels},
        # A pool that does not exist: each cycle is one quick request and a status.
        "spec": {"prefect": {"apiUrl": api_url, "workPool": f"absent-{name}"}, "interval": "10s"},
    } for name in names]
    ns.apply(yaml.safe_dump_all(docs))


def owners(ns: Kubectl) -> dict[str, dict]:
    return {p["metadata"]["name"]: (p.get("status") or {}).get("owner") or {} for p in ns.get_json("pwpp")["items"]}


def holder(ns: Kubectl, lease: str) -> str:
    return ns.get_json("lease", lease)["spec"].get("holderIdentity") or ""


def by_policy(reps: list[Replica], since: float = 0.0) -> dict[str, list[tuple[float, str]]]:
    seen: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for rep in reps:
        for when, name, pod in rep.cycles():
            if when >= since:
                seen[name].append((when, pod))
    return {name: sorted(cycles) for name, cycles in seen.items()}


def doubled(cycles: dict[str, list[tuple[float, str]]], handovers: int) -> int:
    """Cycles run out of turn: every switch of pod beyond one per handover (A, B, A...)."""
    extra = 0
    for seq in cycles.values():
        switches = sum(1 for a, b in zip(seq, seq[1:]) if a[1] != b[1])
        extra += max(0, switches - handovers)
    return extra


def test_two_replicas_one_acts_and_fails_over(kubectl: Kubectl, namespace: str, prefect_server, tmp_path: pathlib.Path) -> None:
    ns = kubectl.in_namespace(namespace)
    names = [f"p{i:02d}" for i in range(10)]
    policies(ns, prefect_server.api_url, names)
    lease = "prefect-workpool-operator"
    with replicas(kubectl, namespace, tmp_path, {"": 2}) as reps:
        leader_pod = wait_for(lambda: holder(ns, lease), what="a leader")
        leader = next(r for r in reps if r.pod == leader_pod)
        standby = next(r for r in reps if r.pod != leader_pod)
        wait_for(lambda: all(o.get("pod") == leader_pod for o in owners(ns).values()) or None, what="owner = leader")
        # Every policy cycled at least twice, all by the leader (the standby never starts one).
        wait_for(lambda: len(by_policy(reps)) == len(names) and all(len(s) >= 2 for s in by_policy(reps).values()),
                 timeout=60, what="two cycles of every policy")
        assert standby.cycles() == []
        assert {pod for seq in by_policy(reps).values() for _, pod in seq} == {leader_pod}

        # SIGKILL: the standby takes over once the lease (15 s) has run out, plus one try (2 s).
        killed_at = time.time()
        kill_process_group(leader.proc)
        wait_for(lambda: holder(ns, lease) == standby.pod, timeout=40, interval=0.2, what="standby holds the Lease")
        FIGURES["sigkill_lease_s"] = time.time() - killed_at
        wait_for(lambda: standby.cycles(), timeout=20, what="standby cycles")
        FIGURES["sigkill_takeover_s"] = standby.cycles()[0][0] - killed_at
        wait_for(lambda: all(o.get("pod") == standby.pod for o in owners(ns).values()) or None, timeout=30,
                 what="owner = new leader")
        # The standby times the lease from when it saw the last renewal (up to one retry late).
        assert FIGURES["sigkill_lease_s"] <= 15 + 2 + 2 + 3  # + slack for a loaded machine
        assert FIGURES["sigkill_takeover_s"] <= FIGURES["sigkill_lease_s"] + 1 + 10  # + a tick + one interval
        FIGURES["sigkill_doubled"] = doubled(by_policy(reps), handovers=1)
        assert FIGURES["sigkill_doubled"] == 0

        # A third replica stands by; SIGTERM the leader: it releases the Lease, the standby takes it at once.
        env_pod = "op-default-2"
        env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig, "PWO_NAMESPACES": namespace,
               "PWO_LEASE_NAMESPACE": namespace, "POD_NAME": env_pod, "PWO_TICK_SECONDS": "1", "PWO_VERBOSE": "1",
               "PWO_LOG_FORMAT": "full", "PWO_METRICS_PORT": "0"}
        with operator_process(env, tmp_path / f"{env_pod}.log") as proc:
            third = Replica(env_pod, "default", tmp_path / f"{env_pod}.log", proc)
            # Its timers tick (and return at once: standby) once it watches the policies.
            wait_for(lambda: "Timer 'reconcile' succeeded" in third.log.read_text(errors="replace"), what="third replica up")
            wait_for(lambda: holder(ns, lease) == standby.pod, what="leader unchanged")
            termed_at = time.time()
            stop_process_group(standby.proc, grace=15.0)
            FIGURES["sigterm_exit_s"] = time.time() - termed_at
            wait_for(lambda: holder(ns, lease) == env_pod, timeout=20, interval=0.2, what="third replica holds the Lease")
            FIGURES["sigterm_lease_s"] = time.time() - termed_at
            wait_for(lambda: third.cycles(), timeout=20, what="third replica cycles")
            FIGURES["sigterm_takeover_s"] = third.cycles()[0][0] - termed_at
            assert FIGURES["sigterm_exit_s"] <= 10
            assert FIGURES["sigterm_lease_s"] <= 2 + 1  # released: taken at the standby's next try
            assert FIGURES["sigterm_takeover_s"] <= FIGURES["sigterm_lease_s"] + 1 + 10  # + a tick + one interval
            wait_for(lambda: all(o.get("pod") == env_pod for o in owners(ns).values()) or None, timeout=30,
                     what="owner = third replica")
            FIGURES["sigterm_doubled"] = doubled(by_policy([*reps, third]), handovers=2)
            assert FIGURES["sigterm_doubled"] == 0
    print("FIGURES", FIGURES)


def test_shards_split_policies_and_relabel_hands_over(kubectl: Kubectl, namespace: str, prefect_server,
                                                     tmp_path: pathlib.Path) -> None:
    ns = kubectl.in_namespace(namespace)
    spread = {"": [f"d{i}" for i in range(4)], "blue": [f"b{i}" for i in range(3)], "green": [f"g{i}" for i in range(3)]}
    for shard, names in spread.items():
        policies(ns, prefect_server.api_url, names, shard or None)
    with replicas(kubectl, namespace, tmp_path, {"": 1, "blue": 2, "green": 1}) as reps:
        shard_of = {name: shard or "default" for shard, names in spread.items() for name in names}
        wait_for(lambda: all(o.get("shard") == shard_of[n] for n, o in owners(ns).items()) or None, timeout=60,
                 what="each policy owned by its shard")
        wait_for(lambda: all(len(s) >= 2 for s in by_policy(reps).values()) and len(by_policy(reps)) == 10,
                 timeout=60, what="two cycles of every policy")
        pods = {r.pod: r.shard for r in reps}
        for name, seq in by_policy(reps).items():
            assert {pods[pod] for _, pod in seq} == {shard_of[name]}, name
            assert len({pod for _, pod in seq}) == 1, name  # one process per policy (blue has two replicas)

        # Relabel b0 from blue to green: green claims it, then cycles it; blue stops.
        moved_at = time.time()
        ns("label", "pwpp", "b0", f"{SHARD_LABEL}=green", "--overwrite")
        wait_for(lambda: owners(ns)["b0"].get("shard") == "green" or None, timeout=20, what="b0 owned by green")
        green = next(r for r in reps if r.shard == "green")
        wait_for(lambda: any(n == "b0" and t >= moved_at for t, n, _ in green.cycles()), timeout=30, what="green cycles b0")
        first_green = min(t for t, n, _ in green.cycles() if n == "b0" and t >= moved_at)
        # Blue's last cycle of b0 started before green's first: handed over once, never both.
        wait_for(lambda: len([c for c in by_policy(reps)["b0"] if c[0] >= first_green]) >= 2, timeout=30,
                 what="green cycles b0 again")
        after = [pod for t, pod in by_policy(reps)["b0"] if t >= first_green]
        assert set(after) == {green.pod}
        FIGURES["relabel_doubled"] = doubled({"b0": by_policy(reps)["b0"]}, handovers=1)
        assert FIGURES["relabel_doubled"] == 0
        FIGURES["relabel_handover_s"] = first_green - moved_at

        # SIGKILL blue's leader: blue's standby takes over; the other shards' leaders stay.
        leases = {"default": "prefect-workpool-operator", "blue": "prefect-workpool-operator-blue",
                  "green": "prefect-workpool-operator-green"}
        before = {shard: holder(ns, lease) for shard, lease in leases.items()}
        blue_leader = next(r for r in reps if r.pod == before["blue"])
        kill_process_group(blue_leader.proc)
        other_blue = next(r for r in reps if r.shard == "blue" and r is not blue_leader)
        wait_for(lambda: holder(ns, leases["blue"]) == other_blue.pod, timeout=40, what="blue fails over")
        assert {shard: holder(ns, lease) for shard, lease in leases.items() if shard != "blue"} == {
            shard: pod for shard, pod in before.items() if shard != "blue"}
        wait_for(lambda: all(owners(ns)[n].get("pod") == other_blue.pod for n in ("b1", "b2")) or None, timeout=30,
                 what="blue's policies owned by its new leader")
        assert owners(ns)["b0"].get("shard") == "green"
    print("FIGURES", FIGURES)


def test_partitioned_leader_stops_before_another_can_start(kubectl: Kubectl, namespace: str) -> None:
    """The leader's API-server connection is cut: it stops acting (renew deadline, its own
    clock) before the standby, which still reaches the server, can take the Lease."""
    config = yaml.safe_load(pathlib.Path(kubectl.kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    server = urllib.parse.urlsplit(cluster["server"])

    async def client(url: str) -> KubeClient:
        """The operator's client, on the test kubeconfig with its server replaced."""
        changed = copy.deepcopy(config)
        changed["clusters"][0]["cluster"]["server"] = url
        configuration = Configuration()
        await load_kube_config_from_dict(changed, client_configuration=configuration)
        return KubeClient(configuration)

    timings = {"lease_seconds": 6.0, "renew_deadline": 4.0, "retry_seconds": 1.0}

    async def scenario() -> dict[str, float]:
        proxy = CuttableProxy(server.hostname or "127.0.0.1", server.port or 443)
        via_proxy = await proxy.start()
        events: dict[str, float] = {}
        a = LeaseElector(namespace=namespace, name="partition", identity="a",
                         on_lost=lambda: events.setdefault("a_stopped", time.monotonic()), **timings)
        b = LeaseElector(namespace=namespace, name="partition", identity="b", **timings)
        kubes = [await client(via_proxy), await client(cluster["server"])]
        a.connect(kubes[0])
        b.connect(kubes[1])
        tasks = [asyncio.ensure_future(a.run())]
        try:
            began = time.monotonic()
            while not a.is_leader:  # a deadline: a wait that never ends would hang the whole run
                assert time.monotonic() - began < 30, "a never took the Lease through the proxy"
                await asyncio.sleep(0.05)
            tasks.append(asyncio.ensure_future(b.run()))
            await asyncio.sleep(2.5)  # b has seen a renew the Lease
            assert a.is_leader and not b.is_leader
            proxy.cut()
            while not b.is_leader:
                assert time.monotonic() - proxy.cut_at < 30, "b never took over"
                if a.is_leader:
                    events["a_last_acting"] = time.monotonic()
                await asyncio.sleep(0.02)
            events["b_started"] = time.monotonic()
            assert not a.is_leader
            return {k: v - proxy.cut_at for k, v in events.items()}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await proxy.close()
            for kube in kubes:
                await kube.aclose()

    after_cut = asyncio.run(scenario())
    FIGURES.update({f"partition_{k}_s": round(v, 2) for k, v in after_cut.items()})
    print("FIGURES", FIGURES)
    # a stopped within its renew deadline (+ the watchdog's step) of its last renewal, which
    # was at most one retry before the cut; b only after the lease, timed from what it saw.
    assert after_cut["a_stopped"] <= timings["renew_deadline"] + 0.5
    assert after_cut["a_last_acting"] < after_cut["a_stopped"] + 0.05
    assert after_cut["b_started"] > after_cut["a_stopped"] + 1.0  # a margin, not a race
