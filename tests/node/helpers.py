"""What the node tests do as users do: helm, kubectl, and looking at the pod's processes from the node."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sandbox.node import LocalNode
from tests.support.kubectl import Kubectl, wait_for

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "prefect-workpool-operator"
CYCLE = re.compile(r"^\[(?P<time>[\d\- :,]+)\].*cycle of (?P<ns>\S+)/(?P<name>\S+) by (?P<pod>\S+) in shard")


class Helm:
    def __init__(self, binary: pathlib.Path, kubeconfig: str) -> None:
        self.binary, self.kubeconfig = str(binary), kubeconfig

    def __call__(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([self.binary, "--kubeconfig", self.kubeconfig, *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout


def operator_pods(ns: Kubectl, release: str) -> list[dict[str, Any]]:
    selector = (f"app.kubernetes.io/name=prefect-workpool-operator,app.kubernetes.io/instance={release},"
                "app.kubernetes.io/component notin (helm-test,uninstall)")
    pods = ns.get_json("pods", "-l", selector)
    return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def restarts(pod: dict[str, Any]) -> int:
    return sum(int(s.get("restartCount", 0)) for s in pod.get("status", {}).get("containerStatuses") or [])


def lease_name(ns: Kubectl, release: str) -> str:
    deploy = ns.get_json("deployment", "-l", f"app.kubernetes.io/instance={release}")["items"][0]
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    return str(env["PWO_LEASE_NAME"])


def lease(ns: Kubectl, name: str) -> dict[str, Any]:
    proc = ns.run("get", "lease", name, "-o", "json", check=False)
    return json.loads(proc.stdout)["spec"] if proc.returncode == 0 else {}


def holder(ns: Kubectl, name: str) -> str:
    return str(lease(ns, name).get("holderIdentity") or "")


def container_pid(node: LocalNode, pod: dict[str, Any], container: str = "operator") -> int:
    """The host pid of a pod's container's main process, as the node's containerd reports it."""
    status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
    cid = status["containerID"].removeprefix("containerd://")
    for line in node.ctr("tasks", "list").stdout.splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == cid:
            return int(pid)
    raise AssertionError(f"no task for container {cid} of {pod['metadata']['name']}")


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def root_mount_options(pid: int) -> list[str]:
    """Mount options of the container's / as its own mount namespace sees it."""
    for line in pathlib.Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        parts = line.split()
        if parts[4] == "/":
            return parts[5].split(",")
    raise AssertionError(f"no / in /proc/{pid}/mountinfo")


@dataclass
class LogFollower:
    """``kubectl logs -f`` of every operator pod of a release (a deleted pod's lines are kept)."""

    ns: Kubectl
    release: str
    workdir: pathlib.Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> LogFollower:
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for proc in self.procs.values():
            proc.terminate()
            proc.wait(timeout=5)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                pods = operator_pods(self.ns, self.release)
            except AssertionError:
                pods = []
            for pod in pods:
                name = pod["metadata"]["name"]
                running = any("running" in (s.get("state") or {}) for s in pod["status"].get("containerStatuses") or [])
                if name in self.procs and self.procs[name].poll() is None or not running:
                    continue
                out = (self.workdir / f"{name}.log").open("ab")
                self.procs[name] = subprocess.Popen(
                    [*self.ns.base_command(), "logs", "-f", "--timestamps=false", name, "-c", "operator"],
                    stdout=out, stderr=subprocess.DEVNULL)
            self._stop.wait(0.5)

    def cycles(self) -> dict[str, list[tuple[float, str]]]:
        """Per policy, (wall time, pod) of every cycle any pod of the release started."""
        seen: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for path in self.workdir.glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                m = CYCLE.match(line)
                if m:
                    when = datetime.strptime(m["time"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc)
                    seen[m["name"]].append((when.timestamp(), m["pod"]))
        return {name: sorted(cycles) for name, cycles in seen.items()}


def doubled(cycles: dict[str, list[tuple[float, str]]], handovers: int) -> int:
    """Cycles run out of turn: every switch of pod beyond one per handover (A, B, A...)."""
    return sum(max(0, sum(1 for a, b in zip(seq, seq[1:]) if a[1] != b[1]) - handovers) for seq in cycles.values())


class LeaseWatch:
    """Reads the Lease every 0.2 s in the background: the longest time no holder renewed it."""

    def __init__(self, ns: Kubectl, name: str) -> None:
        self.ns, self.name = ns, name
        self.samples: list[tuple[float, str, str]] = []  # (when read, holder, renewTime)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> LeaseWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            spec = lease(self.ns, self.name)
            self.samples.append((time.time(), str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or "")))
            self._stop.wait(0.2)

    def longest_gap(self) -> float:
        """Seconds between successive renewals by a holder (a change of renewTime with a holder)."""
        renewals = [when for (when, who, renewed), (_, _, before) in zip(self.samples[1:], self.samples)
                    if who and renewed != before]
        return max((b - a for a, b in zip(renewals, renewals[1:])), default=0.0)

    def renewed_after(self, moment: float) -> float | None:
        """When the Lease was first seen renewed (its renewTime changed, with a holder) after ``moment``."""
        for (when, who, renewed), (_, _, before) in zip(self.samples[1:], self.samples):
            if when > moment and who and renewed != before:
                return when
        return None

    def holders(self) -> list[str]:
        seen: list[str] = []
        for _, who, _ in self.samples:
            if who and (not seen or seen[-1] != who):
                seen.append(who)
        return seen


def wait_ready_pods(ns: Kubectl, release: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = operator_pods(ns, release)
        return pods if len(pods) == count and all(ready(p) for p in pods) else None

    return wait_for(check, timeout=timeout, what=f"{count} ready operator pod(s)")
