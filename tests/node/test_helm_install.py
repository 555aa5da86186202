"""The users' first step, for real: the image built from the Dockerfile, the chart installed with
``helm install --wait`` on a node whose kubelet starts its pod, and everything afterwards —
Lease, reconciling, probes, the pod's security settings, replicas, upgrade, rollback, uninstall.

A pod is working when it holds its shard's Lease and reconciles a policy, not when it is Ready.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from sandbox.moto_server import MotoServer
from sandbox.node import NODE_IP, http_get
from sandbox.prefect_seed import PrefectSeeder, late_state
from sandbox.prefect_server import PrefectServer
from tests.support.names import BASIC_AUTH, unique
from tests.support.ecs_sandbox import REGION, EcsSandbox
from tests.support.kubectl import Kubectl, condition, wait_for
from tests.node.conftest import IMAGE_REPO, IMAGE_TAG, Node, record
from tests.node.helpers import (
    CHART, Helm, LeaseWatch, LogFollower, container_pid, doubled, holder, lease_name, operator_pods, proc_status,
    ready, restarts, root_mount_options, wait_ready_pods,
)

pytestmark = pytest.mark.node

RELEASE = "pwo"
# The chart's pod fits the restricted Pod Security profile: installed where it is enforced.
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


@dataclass
class Release:
    helm: Helm
    ns: Kubectl  # the release namespace
    policies: Kubectl  # a namespace for policies
    lease: str

    def upgrade(self, *sets: str, wait: bool = True) -> float:
        started = time.monotonic()
        self.helm("upgrade", RELEASE, str(CHART), "-n", self.ns.namespace or "", "--reuse-values", *sets,
                  *(["--wait", "--timeout", "3m"] if wait else []))
        return time.monotonic() - started


def _namespace(kubectl: Kubectl, name: str, labels: dict[str, str]) -> Kubectl:
    kubectl.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}))
    return kubectl.in_namespace(name)


@pytest.fixture(scope="module")
def release(node: Node, operator_image: str, helm_binary: pathlib.Path) -> Iterator[Release]:
    kubectl = node.kubectl
    ns = _namespace(kubectl, unique("pwo-system"), RESTRICTED)
    policies = _namespace(kubectl, unique("data"), {})
    helm = Helm(helm_binary, kubectl.kubeconfig)
    values = [
        "--set", f"image.repository={IMAGE_REPO}", "--set", f"image.tag={IMAGE_TAG}", "--set", "image.pullPolicy=Never",
        # Logs the tests read (one line per cycle, with its pod), and cycles that follow edits within a second.
        "--set", "operator.logFormat=full", "--set", "operator.verbose=true", "--set", "operator.tickSeconds=1",
        # Probes a few times faster than the defaults: a wedged process is restarted in ~10 s, not ~70.
        "--set", "operator.livenessProbe.periodSeconds=3", "--set", "operator.livenessProbe.timeoutSeconds=2",
        "--set", "operator.livenessProbe.initialDelaySeconds=5", "--set", "operator.readinessProbe.periodSeconds=2",
    ]
    started = time.monotonic()
    helm("install", RELEASE, str(CHART), "-n", ns.namespace or "", *values, "--wait", "--timeout", "3m")
    record("helm install --wait", time.monotonic() - started)
    yield Release(helm, ns, policies, lease_name(ns, RELEASE))
    # The last test uninstalls; after a failure nothing may keep reconciling behind later modules.
    if RELEASE in helm("list", "-n", ns.namespace or "", "-q").split():
        helm("uninstall", RELEASE, "-n", ns.namespace or "", "--wait", "--timeout", "2m")


def _policy(release: Release, prefect: PrefectServer, name: str) -> None:
    release.policies.apply(yaml.safe_dump({
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy", "metadata": {"name": name},
        "spec": {"prefect": {"apiUrl": prefect.api_url, "workPool": f"pool-{name}"}, "interval": "10s"},
    }))


def _reconciled_by(release: Release, name: str) -> dict:
    policy = release.policies.get_json("pwpp", name)
    return policy if condition(policy, "Ready") and (policy.get("status") or {}).get("owner") else {}


def test_install_holds_the_lease_and_reconciles(node: Node, release: Release, node_prefect: PrefectServer) -> None:
    """Ready alone proves nothing: the pod holds its shard's Lease and a policy applied after the
    install gets conditions, Events and an owner naming that pod."""
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    name = pod["metadata"]["name"]
    wait_for(lambda: holder(release.ns, release.lease) == name, timeout=30, what="the pod holds the Lease")
    with PrefectSeeder(node_prefect.api_url) as seeder:
        seeder.create_ecs_pool("pool-etl")  # a pool that exists: the cycle reads it
    _policy(release, node_prefect, "etl")
    policy = wait_for(lambda: _reconciled_by(release, "etl"), timeout=60, what="the policy reconciled")
    assert policy["status"]["owner"]["pod"] == name
    assert condition(policy, "PrefectConnected")["status"] == "True", policy["status"]["conditions"]
    assert condition(policy, "WorkPoolReady") is not None
    describe = release.policies("describe", "pwpp", "etl")
    assert "Conditions:" in describe and "Events:" in describe and "PrefectConnected" in describe
    events = release.policies.get_json("events", "--field-selector", "involvedObject.name=etl")["items"]
    assert events, "the first cycle posts its Events"


def test_pod_serves_a_busy_pool(release: Release, node_prefect_auth: PrefectServer, node_moto: MotoServer) -> None:
    """A pool as users have them, served by the pod: Prefect behind basic auth and AWS keys, each
    from a Secret; a backlog of Late runs scales the worker service; a PENDING run whose claimer
    never started a task is recovered, one whose ECS task runs is left alone; no secret shows."""
    aws_key, aws_secret = "AKIANODETEST00000001", "node-test-aws-secret-value"
    sandbox = EcsSandbox(node_moto)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    pool = unique("busy")
    with PrefectSeeder(node_prefect_auth.api_url, auth=node_prefect_auth.auth) as seeder:
        seeder.create_ecs_pool(pool)
        deployment = seeder.create_deployment(pool)
        alive, orphan = seeder.create_runs(deployment, 2, {"type": "PENDING"})
        (arn,) = sandbox.run(cluster, run_id=alive)
        seeder._request("PATCH", f"/flow_runs/{alive}", json={"infrastructure_pid": f"{cluster}::{arn}"})
        seeder.create_runs(deployment, 4, late_state(120))
        ns = release.policies
        ns.apply(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prefect-auth"},
             "stringData": {"auth-string": BASIC_AUTH}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-keys"},
             "stringData": {"aws-access-key-id": aws_key, "aws-secret-access-key": aws_secret}},
            {"apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy", "metadata": {"name": "busy"},
             "spec": {
                 "prefect": {"apiUrl": node_prefect_auth.api_url, "workPool": pool,
                             "auth": {"basicAuthSecretRef": {"name": "prefect-auth", "key": "auth-string"}}},
                 "interval": "10s",
                 "ecs": {"region": REGION, "cluster": cluster, "service": service, "endpointUrl": node_moto.endpoint_url,
                         "credentialsSecretRef": {"name": "aws-keys"}},
                 "scaling": {"mode": "DesiredCount", "minWorkers": 0, "maxWorkers": 3, "backlogPerWorker": 2},
                 "staleRuns": {"pendingTimeout": "30s"},
             }},
        ]))

        def desired() -> int:
            return sandbox.ecs.describe_services(cluster=cluster, services=[service])["services"][0]["desiredCount"]

        wait_for(lambda: desired() == 2, timeout=90, what="desiredCount 2 for 4 Late runs")
        wait_for(lambda: seeder.read_run(orphan)["state"]["name"] == "Requeued", timeout=120, what="the orphan requeued")
        assert seeder.read_run(alive)["state"]["type"] == "PENDING"  # its ECS task is RUNNING
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    policy = ns.get_json("pwpp", "busy")
    status = policy["status"]
    assert status["owner"]["pod"] == pod["metadata"]["name"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert {"Ready": "True", "PrefectConnected": "True", "AwsConnected": "True"}.items() <= conditions.items(), conditions
    assert status["runs"]["late"] == 4
    assert status["staleRuns"]["skipped"]["infrastructureAlive"] == 1
    # The chart gives the pod no AWS credential of its own: the ECS calls were signed with the Secret's keys.
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env", [])}
    assert not any(name.startswith("AWS_") for name in env), env
    readable = (ns("get", "pwpp", "busy", "-o", "yaml") + ns("get", "events", "-o", "yaml")
                + release.ns("logs", pod["metadata"]["name"]) + ns("describe", "pwpp", "busy"))
    for secret in (BASIC_AUTH.partition(":")[2], aws_secret, aws_key):
        assert secret not in readable


def test_pod_runs_as_the_chart_says(node: Node, release: Release) -> None:
    """Enforced by the kubelet and runc, read from the container's process on the node."""
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    pid = container_pid(node.node, pod)
    status = proc_status(pid)
    assert status["Uid"].split()[:2] == ["65532", "65532"] and status["Gid"].split()[:2] == ["65532", "65532"]
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "seccomp RuntimeDefault is a filter (mode 2)"
    assert "ro" in root_mount_options(pid)
    passwd = pathlib.Path(f"/proc/{pid}/root/etc/passwd").read_text()
    assert not any(line.split(":")[2] == "65532" for line in passwd.splitlines() if line.count(":") >= 2), \
        "the image has no passwd entry for the operator's uid"


def test_pods_reach_only_this_machine(release: Release, node_prefect: PrefectServer) -> None:
    """From inside the operator's pod: this machine's addresses answer; a server beyond it that
    this machine itself reaches (its DNS resolver) does not — nothing of the pods is routed off."""
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    resolver = next(line.split()[1] for line in pathlib.Path("/etc/resolv.conf").read_text().splitlines()
                    if line.startswith("nameserver"))
    probe = ("import socket, sys\n"
             "try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
             "except OSError as exc:\n    print('unreachable', type(exc).__name__)")

    def reach(host: str, port: int, *where: str) -> str:
        return subprocess.run([*where, "python3", "-c", probe, host, str(port)], capture_output=True, text=True,
                              check=True).stdout.strip()

    in_pod = [*release.ns.base_command(), "exec", pod["metadata"]["name"], "-c", "operator", "--"]
    if reach(resolver, 53) != "open":
        pytest.skip(f"this machine does not reach {resolver}:53 itself: nothing to compare with")
    assert reach(NODE_IP, node_prefect.port or 0, *in_pod) == "open"
    assert reach(resolver, 53, *in_pod).startswith("unreachable")


def test_metrics_through_the_pod_address_and_helm_test(release: Release) -> None:
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    ip = pod["status"]["podIP"]
    code, body = http_get(f"http://{ip}:8080/metrics")
    assert code == 200 and "pwo_cycles" in body
    code, body = http_get(f"http://{ip}:8081/healthz")
    assert code == 200, body
    out = release.helm("test", RELEASE, "-n", release.ns.namespace or "", "--timeout", "3m")
    assert "Phase:          Succeeded" in out or "Succeeded" in out, out


def test_readiness_follows_the_lease(release: Release) -> None:
    """Not ready while the Lease cannot be reached (its Role removed); ready again once it can."""
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    role = release.ns.get_json("role", f"{RELEASE}-prefect-workpool-operator-leader-election")
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        role["metadata"].pop(key, None)
    release.ns("delete", "role", role["metadata"]["name"])
    try:
        wait_for(lambda: not ready(release.ns.get_json("pod", name)), timeout=90, what="pod not Ready")
        code, body = http_get(f"http://{ip}:8081/readyz")
        assert code == 503 and "lease" in body.lower(), (code, body)
    finally:
        release.ns.apply(json.dumps(role))
    wait_for(lambda: ready(release.ns.get_json("pod", name)), timeout=90, what="pod Ready again")
    wait_for(lambda: holder(release.ns, release.lease) == name, timeout=30, what="the pod holds the Lease again")


def test_no_login_is_not_ready(release: Release) -> None:
    """A pod without a ServiceAccount token cannot log in: it never turns Ready (the old pod keeps
    serving: maxUnavailable 0), and says why."""
    deployment = f"deployment/{RELEASE}-prefect-workpool-operator"
    release.ns("patch", deployment, "--type=merge", "-p", '{"spec":{"template":{"spec":{"automountServiceAccountToken":false}}}}')
    try:
        def tokenless() -> dict | None:
            for pod in operator_pods(release.ns, RELEASE):
                if not pod["spec"].get("automountServiceAccountToken", True) and pod["status"].get("podIP"):
                    return pod
            return None

        pod = wait_for(tokenless, timeout=60, what="the new pod without a token")
        code, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http_get(f"http://{pod['status']['podIP']}:8081/readyz")),
                              timeout=60, what="/readyz answering 503")
        assert "login" in body.lower(), body
        assert http_get(f"http://{pod['status']['podIP']}:8081/healthz")[0] == 200  # alive, only not ready
        assert not ready(release.ns.get_json("pod", pod["metadata"]["name"]))
    finally:
        release.ns("rollout", "undo", deployment)
    wait_ready_pods(release.ns, RELEASE, 1)


def test_kubelet_restarts_a_wedged_process(node: Node, release: Release) -> None:
    """SIGSTOP: the event loop cannot answer /healthz; the liveness probe fails and the kubelet restarts it."""
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    name, before = pod["metadata"]["name"], restarts(pod)
    stopped_at = time.monotonic()
    os.kill(container_pid(node.node, pod), signal.SIGSTOP)
    wait_for(lambda: restarts(release.ns.get_json("pod", name)) > before, timeout=150, interval=1,
             what="the kubelet restarted the wedged container")
    record("wedged process restarted by the kubelet after", time.monotonic() - stopped_at)
    wait_ready_pods(release.ns, RELEASE, 1)
    wait_for(lambda: holder(release.ns, release.lease) == name, timeout=60, what="it leads again")


def test_two_replicas_take_over(node: Node, release: Release, node_prefect: PrefectServer,
                                tmp_path: pathlib.Path) -> None:
    """Delete the leader pod: the other takes over, no cycle runs twice; kill -9 a container: the
    kubelet restarts it and it rejoins."""
    for i in range(3):
        _policy(release, node_prefect, f"ha-{i}")
    release.upgrade("--set", "replicaCount=2")
    with LogFollower(release.ns, RELEASE, tmp_path) as logs:
        pods = wait_ready_pods(release.ns, RELEASE, 2)
        leader = wait_for(lambda: holder(release.ns, release.lease), what="a leader")
        standby = next(p["metadata"]["name"] for p in pods if p["metadata"]["name"] != leader)
        wait_for(lambda: all(len(logs.cycles().get(f"ha-{i}", [])) >= 2 for i in range(3)), timeout=60,
                 what="two cycles of every policy")
        deleted_at = time.time()
        release.ns("delete", "pod", leader, "--wait=false")
        wait_for(lambda: holder(release.ns, release.lease) == standby, timeout=30, interval=0.2,
                 what="the standby holds the Lease")
        record("takeover after the leader pod's deletion (Lease)", time.time() - deleted_at)
        wait_for(lambda: any(pod == standby and when > deleted_at for seq in logs.cycles().values() for when, pod in seq),
                 timeout=30, what="the new leader cycles")
        record("takeover after the leader pod's deletion (first cycle)",
               min(when for seq in logs.cycles().values() for when, pod in seq if pod == standby) - deleted_at)
        wait_ready_pods(release.ns, RELEASE, 2)
        assert doubled({k: v for k, v in logs.cycles().items() if k.startswith("ha-")}, handovers=1) == 0

    # kill -9 of the (new) leader's container: the kubelet restarts it; it rejoins, as leader or standby.
    pod = release.ns.get_json("pod", standby)
    before = restarts(pod)
    with LeaseWatch(release.ns, release.lease) as watch:
        killed_at = time.time()
        os.kill(container_pid(node.node, pod), signal.SIGKILL)
        wait_for(lambda: restarts(release.ns.get_json("pod", standby)) > before, timeout=60, what="container restarted")
        wait_ready_pods(release.ns, RELEASE, 2)
        names = {p["metadata"]["name"] for p in operator_pods(release.ns, RELEASE)}
        wait_for(lambda: holder(release.ns, release.lease) in names, timeout=40, what="a replica of the two holds the Lease")
        wait_for(lambda: watch.renewed_after(killed_at), timeout=40, what="the Lease renewed after the kill")
    record("Lease renewed again after kill -9 of the leader's container", watch.renewed_after(killed_at) - killed_at)
    release.upgrade("--set", "replicaCount=1")
    wait_ready_pods(release.ns, RELEASE, 1)


def test_upgrade_rollback_uninstall(node: Node, release: Release, node_prefect: PrefectServer,
                                    tmp_path: pathlib.Path) -> None:
    """A new image tag rolls out with the Lease handed over (no gap longer than the lease);
    rollback returns to the old one; uninstall leaves no holder and no finalizer in the way."""
    node.node.tag_image(f"docker.io/library/{IMAGE_REPO}:{IMAGE_TAG}", f"docker.io/library/{IMAGE_REPO}:{IMAGE_TAG}-2")
    _policy(release, node_prefect, "upgraded")
    wait_for(lambda: _reconciled_by(release, "upgraded"), timeout=60, what="the policy reconciled")
    with LeaseWatch(release.ns, release.lease) as watch, LogFollower(release.ns, RELEASE, tmp_path) as logs:
        seconds = release.upgrade("--set", f"image.tag={IMAGE_TAG}-2")
        (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
        wait_for(lambda: holder(release.ns, release.lease) == pod["metadata"]["name"], timeout=30, what="new pod leads")
        new_pod = pod["metadata"]["name"]
        wait_for(lambda: any(p == new_pod for _, p in logs.cycles().get("upgraded", [])), timeout=30,
                 what="the new pod cycles the policy")
    assert doubled({"upgraded": logs.cycles()["upgraded"]}, handovers=1) == 0, logs.cycles()["upgraded"]
    record("helm upgrade --wait (new image)", seconds)
    record("longest time without a Lease renewal during the upgrade", watch.longest_gap())
    assert pod["spec"]["containers"][0]["image"].endswith(f":{IMAGE_TAG}-2")
    assert watch.longest_gap() <= 15, watch.samples
    assert len(watch.holders()) >= 2, "the Lease changed hands"

    release.helm("rollback", RELEASE, "-n", release.ns.namespace or "", "--wait", "--timeout", "3m")
    (pod,) = wait_ready_pods(release.ns, RELEASE, 1)
    assert pod["spec"]["containers"][0]["image"].endswith(f":{IMAGE_TAG}")
    wait_for(lambda: holder(release.ns, release.lease) == pod["metadata"]["name"], timeout=30, what="rolled-back pod leads")

    release.helm("uninstall", RELEASE, "-n", release.ns.namespace or "", "--wait", "--timeout", "2m")
    assert holder(release.ns, release.lease) == "", "the last leader released the Lease"
    release.policies("delete", "pwpp", "--all", "--timeout=60s")
    assert release.policies.get_json("pwpp")["items"] == []
