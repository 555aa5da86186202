"""The Helm chart on a real API server, and the operator running with the chart's own RBAC.

Each test installs the chart with ``helm`` (no ``--wait``: the local control plane has
no controller-manager, so the Deployment never gets a Pod), then runs the operator
process on this machine the way the Pod would run it: with the Deployment's
environment and a token minted for the chart's ServiceAccount, never admin
credentials. That proves the rules are sufficient (a policy is fully reconciled:
status, conditions, finalizer, Events) and ``kubectl auth can-i`` with the same
token proves what the operator cannot do.

The tests use a control plane of their own, so no other operator (e.g. the
admin-credentialed one of test_operator.py) reconciles their policies, and so the
chart's ``crds/`` really installs the CRD. With ``E2E_USE_KUBECONFIG=1`` they use the
cluster ``KUBECONFIG`` names instead (run this module on its own there, so that no
admin-credentialed operator from another module serves the same cluster).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml

from sandbox.kube import LocalControlPlane, build_tools
from sandbox.processes import free_port
from sandbox.processes import operator_process as run_operator
from sandbox.prefect_seed import PrefectSeeder, late_state
from tests.support.chart_monitoring import (
    alert_expressions, dashboard_expressions, exported_names, label_matchers, metric_names, render_rules,
)
from tests.support.names import BASIC_AUTH, unique
from tests.support.kubectl import Kubectl, condition, service_account_kubeconfig, wait_for

pytestmark = pytest.mark.e2e

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "prefect-workpool-operator"
CRD_NAME = "prefectworkpoolpolicies.prefectops.dev"
PWPP = CRD_NAME  # fully qualified resource name for `kubectl auth can-i`
FINALIZER = "prefectops.dev/finalizer"
LEASES = "leases.coordination.k8s.io"
# No node runs the pre-delete hook's Job here (tests/node runs it): uninstall without hooks.
NO_NODE = ("--no-hooks",)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    if os.environ.get("E2E_USE_KUBECONFIG") == "1":
        yield Kubectl(os.environ["KUBECONFIG"])
        return
    with LocalControlPlane(tmp_path_factory.mktemp("kube-helm")) as plane:
        yield Kubectl(plane.kubeconfig)


class Helm:
    def __init__(self, binary: pathlib.Path, kubeconfig: str) -> None:
        self.binary, self.kubeconfig = str(binary), kubeconfig

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args], capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        out = self.run("get", "manifest", release, "-n", namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def helm(cluster: Kubectl) -> Helm:
    return Helm(build_tools() / "helm", cluster.kubeconfig)


def sets(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@contextmanager
def namespaces(k: Kubectl, *names: str) -> Iterator[None]:
    """Create namespaces; afterwards strip policy finalizers and ask for the namespaces to go.

    Without a controller-manager namespaces never finish deleting, hence ``--wait=false``.
    """
    for name in names:
        k("create", "namespace", name)
    try:
        yield
    finally:
        for name in names:
            ns = k.in_namespace(name)
            for policy in ns.run("get", "pwpp", "-o", "name", check=False).stdout.split():
                ns.run("patch", policy, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            k.run("delete", "namespace", name, "--wait=false", check=False)


@contextmanager
def release(helm: Helm, name: str, namespace: str, *args: str) -> Iterator[subprocess.CompletedProcess[str]]:
    """``helm install``; uninstalled afterwards if the test did not do it itself."""
    installed = helm.run("install", name, str(CHART), "-n", namespace, *args)
    try:
        yield installed
    finally:
        if helm.run("status", name, "-n", namespace, check=False).returncode == 0:
            helm.run("uninstall", name, "-n", namespace, *NO_NODE, check=False)


def deployment_env(k: Kubectl, namespace: str, name: str) -> dict[str, str]:
    deployment = k.in_namespace(namespace).get_json("deployment", name)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    # The API server drops empty values ("value": "" is omitted), hence the default.
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if "valueFrom" not in e}


@contextmanager
def operator_as_pod(chart_env: dict[str, str], kubeconfig: pathlib.Path, log: pathlib.Path,
                    namespace: str, pod: str = "pod-0") -> Iterator[dict[str, str]]:
    """The operator process with the Pod's environment and the ServiceAccount's token.

    Only the ports change (many test processes share this machine's loopback), and the
    downward API's POD_NAME / POD_NAMESPACE are given here; yields the liveness and metrics URLs.
    """
    liveness, metrics_port = f"http://127.0.0.1:{free_port()}/healthz", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PWO_", "KUBERNETES_"))}
    env.update(chart_env)
    env.update({
        "KUBECONFIG": str(kubeconfig), "POD_NAME": pod, "POD_NAMESPACE": namespace,
        "PWO_LIVENESS_ENDPOINT": liveness,
        "PWO_METRICS_PORT": str(metrics_port) if chart_env.get("PWO_METRICS_PORT", "0") != "0" else "0",
    })
    with run_operator(env, log):
        yield {"liveness": liveness, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}


def policy(name: str, api_url: str, pool: str, auth: dict[str, Any] | None = None) -> str:
    prefect: dict[str, Any] = {"apiUrl": api_url, "workPool": pool}
    if auth:
        prefect["auth"] = auth
    return yaml.safe_dump({
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
        "metadata": {"name": name}, "spec": {"prefect": prefect, "interval": "10s"},
    })


def secret(name: str, key: str, value: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {key: base64.b64encode(value.encode()).decode()},
    })


def reconciled(ns: Kubectl, name: str):
    def check() -> dict[str, Any] | None:
        obj = ns.get_json("pwpp", name)
        ready = condition(obj, "Ready")
        return obj if ready and ready["status"] == "True" and ready["reason"] == "Reconciled" else None
    return check


def events_for(ns: Kubectl, name: str) -> list[dict[str, Any]]:
    return [e for e in ns.get_json("events")["items"] if e["involvedObject"]["name"] == name]


def can_i(k: Kubectl, *args: str) -> bool:
    proc = k.run("auth", "can-i", *args, check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, f"kubectl auth can-i {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return answer == "yes"


def assert_can(k: Kubectl, allowed: list[tuple[str, ...]], denied: list[tuple[str, ...]]) -> None:
    wrong = [("should be allowed", a) for a in allowed if not can_i(k, *a)]
    wrong += [("should be denied", d) for d in denied if can_i(k, *d)]
    assert not wrong, wrong


def kinds(manifest: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
    return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in manifest}


def flow_schema(cluster: Kubectl, sa: Kubectl, path: str) -> str:
    """The FlowSchema the API server put a GET of ``sa`` in (API Priority and Fairness tells
    it in a response header, whatever the answer's status)."""
    config = json.loads(pathlib.Path(sa.kubeconfig).read_text())
    server = config["clusters"][0]["cluster"]
    context = ssl.create_default_context(cadata=base64.b64decode(server["certificate-authority-data"]).decode())
    request = urllib.request.Request(
        server["server"] + path, headers={"Authorization": f"Bearer {config['users'][0]['user']['token']}"}
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            uid = answer.headers["X-Kubernetes-PF-FlowSchema-UID"]
    except urllib.error.HTTPError as refused:
        uid = refused.headers["X-Kubernetes-PF-FlowSchema-UID"]
    names = {s["metadata"]["uid"]: s["metadata"]["name"] for s in cluster.get_json("flowschemas")["items"]}
    return names.get(uid, f"no FlowSchema (header {uid!r})")


def not_found(k: Kubectl, *args: str) -> bool:
    proc = k.run("get", *args, check=False)
    return proc.returncode != 0 and "NotFound" in proc.stderr


def secret_watches(cluster: Kubectl) -> float:
    """Watches of Secrets open on the API server now (only the operator watches Secrets here)."""
    total = 0.0
    for line in cluster("get", "--raw", "/metrics").splitlines():
        if line.startswith("apiserver_longrunning_requests{") and 'resource="secrets"' in line and 'verb="WATCH"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def log_problems(log: pathlib.Path) -> list[str]:
    """Operator log lines that betray missing permissions."""
    markers = ("Forbidden", "forbidden", "RBAC: 403", "Not enough permissions", "Failed to post an event")
    return [line for line in log.read_text(errors="replace").splitlines() if any(m in line for m in markers)]


# -- the chart's Pod passes the "restricted" Pod Security Standard ----------------------------------


def assert_pod_is_restricted(k: Kubectl, namespace: str, deployment: dict[str, Any]) -> None:
    """Server-side dry-run of the Deployment's Pod in a namespace enforcing "restricted".

    Pod Security admission runs on dry-run creates, so this is the API server's verdict.
    A deliberately weakened copy is rejected, showing the check is live.
    """
    k("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-check", "namespace": namespace},
           "spec": template["spec"]}
    k("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    weakened = k.run("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    assert weakened.returncode != 0 and "restricted" in weakened.stderr, weakened.stderr


def assert_crd_upgrade_path(k: Kubectl, helm: Helm) -> None:
    """docs/install.md's CRD upgrade, on a CRD that Helm (or anyone) created before.

    A changed CRD conflicts with the fields the creator owns, hence --force-conflicts.
    """
    crds = helm.run("show", "crds", str(CHART)).stdout
    crd = yaml.safe_load(crds)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["description"] += " (upgraded)"
    changed = yaml.safe_dump(crd)
    owners = {f["manager"] for f in k.get_json("crd", CRD_NAME, "--show-managed-fields")["metadata"]["managedFields"]}
    if "kubectl" not in owners:  # created by helm here; an earlier `kubectl apply` would own it itself
        refused = k.run("apply", "--server-side", "-f", "-", stdin=changed, check=False)
        assert refused.returncode != 0 and "conflict" in refused.stderr.lower(), refused.stderr
    try:
        k("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=changed)
        wait_for(lambda: "(upgraded)" in k("explain", "pwpp"), what="the upgraded CRD")
    finally:
        k("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crds)


def assert_helm_test_passes_on(urls: dict[str, str], helm: Helm, release_name: str, namespace: str) -> None:
    """The `helm test` Pod's own script, as installed, run here against the real operator's
    endpoints (this control plane runs no Pods); it fails when an endpoint does not answer."""
    hooks = [d for d in yaml.safe_load_all(helm.run("get", "hooks", release_name, "-n", namespace).stdout) if d]
    (pod,) = [d for d in hooks if d["kind"] == "Pod"]
    (c,) = pod["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"] and {e["name"] for e in c["env"]} == {"HEALTH_URL", "METRICS_URL"}
    env = {**os.environ, "HEALTH_URL": urls["liveness"], "METRICS_URL": urls["metrics"], "ATTEMPTS": "3"}
    passed = subprocess.run([sys.executable, "-c", c["command"][2]], env=env, capture_output=True, text=True, timeout=60)
    assert passed.returncode == 0 and passed.stdout.count("ok: ") == 2, passed.stdout + passed.stderr
    dead = {**env, "METRICS_URL": f"http://127.0.0.1:{free_port()}/metrics", "ATTEMPTS": "1"}
    failed = subprocess.run([sys.executable, "-c", c["command"][2]], env=dead, capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "failed: " in failed.stderr


def assert_alerts_and_dashboard_read_what_is_exported(page: str, helm: Helm) -> None:
    """Every series the chart's alerts and dashboard query is on this real /metrics page, and
    every label they match on is on its samples (where the page has samples of it)."""
    exported = exported_names(page)
    queries = [*alert_expressions(render_rules(helm.binary)).values(), *dashboard_expressions().values()]
    used = set().union(*(metric_names(q) for q in queries)) - {"up"}
    assert used and used <= set(exported), used - set(exported)
    for metric, label, _ in set().union(*(label_matchers(q) for q in queries)):
        if exported[metric] and label != "job":  # job: the target's label, set by Prometheus
            assert label in exported[metric], (metric, label)


# -- tests ---------------------------------------------------------------------------------------


def test_cluster_wide_release(cluster: Kubectl, helm: Helm, prefect_server, tmp_path: pathlib.Path) -> None:
    rel_ns, team = unique("pwo"), unique("team")
    name = "pwo"
    fullname = f"{name}-prefect-workpool-operator"
    scoped = f"{rel_ns}-{fullname}"
    with namespaces(cluster, rel_ns, team), release(helm, name, rel_ns, *sets({"operator.tickSeconds": "1"})):
        # -- what helm installed
        assert kinds(helm.manifest(name, rel_ns)) == {
            ("ServiceAccount", fullname, rel_ns),
            ("Deployment", fullname, rel_ns),
            ("ClusterRole", scoped, None),
            ("ClusterRoleBinding", scoped, None),
            ("ClusterRole", f"{scoped}-discovery", None),
            ("ClusterRoleBinding", f"{scoped}-discovery", None),
            ("Role", f"{fullname}-leader-election", rel_ns),
            ("RoleBinding", f"{fullname}-leader-election", rel_ns),
            ("FlowSchema", f"{scoped}-leader-election", None),
        }
        cluster("wait", "--for=condition=Established", "--timeout=30s", f"crd/{CRD_NAME}")
        deployment = cluster.in_namespace(rel_ns).get_json("deployment", fullname)
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "RollingUpdate"
        assert pod["serviceAccountName"] == fullname
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness", "scheme": "HTTP"}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        chart_env = deployment_env(cluster, rel_ns, fullname)
        assert chart_env["PWO_NAMESPACES"] == "" and chart_env["PWO_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8081/healthz"
        assert chart_env["PWO_METRICS_PORT"] == "8080"
        assert_pod_is_restricted(cluster, rel_ns, deployment)
        assert_crd_upgrade_path(cluster, helm)

        # -- the operator with the chart's ServiceAccount reconciles a policy fully
        pool = unique("pool")
        with PrefectSeeder(prefect_server.api_url) as seeder:
            seeder.create_ecs_pool(pool)
            dep = seeder.create_deployment(pool)
            seeder.create_runs(dep, 2, late_state(120))
            seeder.create_runs(dep, 1, {"type": "PENDING"})
            seeder.heartbeat_worker(pool, "worker-1")
        ns = cluster.in_namespace(team)
        ns.apply(policy("etl", prefect_server.api_url, pool))
        sa = service_account_kubeconfig(cluster, rel_ns, fullname, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        with operator_as_pod(chart_env, pathlib.Path(sa.kubeconfig), log, rel_ns) as urls:
            obj = wait_for(reconciled(ns, "etl"), timeout=60, what="Ready=True with the chart's RBAC")
            status = obj["status"]
            assert status["runs"] == {"late": 2, "pending": 1, "running": 0}
            assert status["workers"] == {"online": 1, "offline": 0}
            assert status["observedGeneration"] == obj["metadata"]["generation"]
            assert {c["type"]: c["status"] for c in status["conditions"]} == {
                "Ready": "True", "PrefectConnected": "True", "WorkPoolReady": "True",
            }
            assert FINALIZER in obj["metadata"]["finalizers"]
            wait_for(lambda: any(e["reason"] == "Reconciled" for e in events_for(ns, "etl")), what="a Reconciled Event")
            assert {e["type"] for e in events_for(ns, "etl")} == {"Normal"}
            # The ports the chart configures answer: kopf's liveness probe and /metrics.
            with urllib.request.urlopen(urls["liveness"], timeout=5) as probe:
                assert probe.status == 200
            with urllib.request.urlopen(urls["metrics"], timeout=5) as scrape:
                page = scrape.read().decode()
            assert f'namespace="{team}"' in page
            assert_alerts_and_dashboard_read_what_is_exported(page, helm)
            assert_helm_test_passes_on(urls, helm, name, rel_ns)
            # A spec edit is seen through the watch and reconciled (patch + status patch again).
            ns("patch", "pwpp", "etl", "--type=merge", "-p", '{"spec":{"interval":"20s"}}')
            wait_for(lambda: ns.get_json("pwpp", "etl")["status"]["observedGeneration"] == 2, what="generation 2")
            # It took the release's Lease with the ServiceAccount's token and names itself the owner.
            lease = cluster.in_namespace(rel_ns).get_json("lease", fullname)
            assert lease["spec"]["holderIdentity"] == "pod-0"
            assert ns.get_json("pwpp", "etl")["status"]["owner"]["pod"] == "pod-0"
            # Its Lease requests go to the leader-election priority level; its other requests
            # stay where every ServiceAccount's are.
            leases = f"/apis/coordination.k8s.io/v1/namespaces/{rel_ns}/leases"
            assert flow_schema(cluster, sa, f"{leases}/{fullname}") == f"{scoped}-leader-election"
            assert flow_schema(cluster, sa, f"/apis/coordination.k8s.io/v1/namespaces/{team}/leases/x") == "service-accounts"
            assert flow_schema(cluster, sa, "/apis/prefectops.dev/v1alpha1/prefectworkpoolpolicies") == "service-accounts"
            assert cluster.get_json("flowschema", f"{scoped}-leader-election")["spec"]["priorityLevelConfiguration"] == {
                "name": "leader-election"
            }
        assert log_problems(log) == []
        # Stopped gracefully: the Lease is released for the next Pod.
        assert not cluster.in_namespace(rel_ns).get_json("lease", fullname)["spec"].get("holderIdentity")

        # -- what the ServiceAccount may and may not do
        assert_can(
            sa,
            allowed=[
                ("list", PWPP, "-A"), ("watch", PWPP, "-A"), ("patch", PWPP, "-n", team),
                ("patch", PWPP, "--subresource=status", "-n", team), ("create", "events", "-n", team),
                ("get", "secrets", "-n", team), ("list", "customresourcedefinitions.apiextensions.k8s.io"),
                # the Secret cache lists and watches the Secrets where policies are (kube/secrets.py)
                ("list", "secrets", "-A"), ("watch", "secrets", "-n", team), ("list", "secrets", "-n", team),
                ("create", LEASES, "-n", rel_ns), ("get", f"{LEASES}/{fullname}", "-n", rel_ns),
                ("update", f"{LEASES}/{fullname}", "-n", rel_ns),
            ],
            denied=[
                ("get", "configmaps", "-n", team), ("create", PWPP, "-n", team), ("delete", PWPP, "-n", team),
                ("update", PWPP, "-n", team), ("get", PWPP, "-n", team),
                ("delete", "pods", "-n", rel_ns), ("create", "pods", "-n", rel_ns), ("delete", "deployments.apps", "-n", rel_ns),
                ("patch", "deployments.apps", "-n", rel_ns), ("delete", "events", "-n", team), ("patch", "events", "-n", team),
                ("create", "customresourcedefinitions.apiextensions.k8s.io"),
                ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
                ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
                ("get", "customresourcedefinitions.apiextensions.k8s.io"),
                ("list", "namespaces"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
                ("create", "serviceaccounts", "--subresource=token", "-n", rel_ns), ("impersonate", "users"), ("*", "*"),
                # Leases: its own only, and only in the release namespace.
                ("update", f"{LEASES}/kube-controller-manager", "-n", rel_ns), ("delete", f"{LEASES}/{fullname}", "-n", rel_ns),
                ("list", LEASES, "-n", rel_ns), ("create", LEASES, "-n", team), ("get", f"{LEASES}/{fullname}", "-n", team),
                ("update", f"{LEASES}/kube-scheduler", "-n", "kube-system"),
            ],
        )

        # -- upgrade with changed values
        role_arn = "arn:aws:iam::123456789012:role/prefect-workpool-operator"
        upgraded = sets({
            "operator.tickSeconds": "1", "operator.logFormat": "plain", "metrics.service.enabled": "true",
            r"serviceAccount.annotations.eks\.amazonaws\.com/role-arn": role_arn,
            "extraEnv[0].name": "AWS_REGION", "extraEnv[0].value": "eu-west-1",
        })
        helm.run("upgrade", name, str(CHART), "-n", rel_ns, *upgraded)
        assert json.loads(helm.run("status", name, "-n", rel_ns, "-o", "json").stdout)["version"] == 2
        chart_env = deployment_env(cluster, rel_ns, fullname)
        assert chart_env["PWO_LOG_FORMAT"] == "plain" and chart_env["AWS_REGION"] == "eu-west-1"
        sa_obj = cluster.in_namespace(rel_ns).get_json("serviceaccount", fullname)
        assert sa_obj["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role_arn
        service = cluster.in_namespace(rel_ns).get_json("service", f"{fullname}-metrics")
        assert service["spec"]["ports"] == [
            {"name": "http-metrics", "port": 8080, "protocol": "TCP", "targetPort": "http-metrics"}
        ]
        assert can_i(sa, "list", PWPP, "-A")  # the same ServiceAccount, same rules, after the upgrade

        # -- uninstall: the release's objects go; the CRD and the policy stay
        helm.run("uninstall", name, "-n", rel_ns, *NO_NODE)
        assert not_found(cluster, "-n", rel_ns, "deployment", fullname)
        assert not_found(cluster, "-n", rel_ns, "serviceaccount", fullname)
        assert not_found(cluster, "clusterrole", scoped)
        assert not_found(cluster, "clusterrolebinding", f"{scoped}-discovery")
        cluster("get", "crd", CRD_NAME)
        kept = ns.get_json("pwpp", "etl")
        assert condition(kept, "Ready")["status"] == "True"
        # With no operator left, the finalizer stays: deleting the policy now would wait (docs/install.md).
        assert FINALIZER in kept["metadata"]["finalizers"]


def test_namespaced_release(cluster: Kubectl, helm: Helm, prefect_auth_server, tmp_path: pathlib.Path) -> None:
    rel_ns, watched, other = unique("pwo"), unique("team"), unique("other")
    name = "pwo"
    fullname = f"{name}-prefect-workpool-operator"
    scoped = f"{rel_ns}-{fullname}"
    values = {"operator.tickSeconds": "1", "watchNamespaces[0]": watched, "rbac.secretNames[0]": "prefect-auth"}
    with namespaces(cluster, rel_ns, watched, other), release(helm, name, rel_ns, *sets(values)):
        assert kinds(helm.manifest(name, rel_ns)) == {
            ("ServiceAccount", fullname, rel_ns),
            ("Deployment", fullname, rel_ns),
            ("Role", scoped, watched),
            ("RoleBinding", scoped, watched),
            ("ClusterRole", f"{scoped}-discovery", None),
            ("ClusterRoleBinding", f"{scoped}-discovery", None),
            ("Role", f"{fullname}-leader-election", rel_ns),
            ("RoleBinding", f"{fullname}-leader-election", rel_ns),
            ("FlowSchema", f"{scoped}-leader-election", None),
        }
        chart_env = deployment_env(cluster, rel_ns, fullname)
        assert chart_env["PWO_NAMESPACES"] == watched

        # One pool per policy: two policies over one pool would be a Conflict (the older one acts).
        pools = {watched: unique("pool"), other: unique("pool")}
        with PrefectSeeder(prefect_auth_server.api_url, auth=prefect_auth_server.auth) as seeder:
            for pool in pools.values():
                seeder.create_ecs_pool(pool)
        auth = {"basicAuthSecretRef": {"name": "prefect-auth", "key": "auth-string"}}
        for namespace in (watched, other):
            k = cluster.in_namespace(namespace)
            k.apply(secret("prefect-auth", "auth-string", BASIC_AUTH))
            k.apply(policy("etl", prefect_auth_server.api_url, pools[namespace], auth))
        sa = service_account_kubeconfig(cluster, rel_ns, fullname, tmp_path / "sa.kubeconfig")
        log = tmp_path / "operator.log"
        with operator_as_pod(chart_env, pathlib.Path(sa.kubeconfig), log, rel_ns):
            obj = wait_for(reconciled(cluster.in_namespace(watched), "etl"), timeout=60, what="watched policy Ready")
            assert condition(obj, "PrefectConnected")["reason"] == "Connected"  # the Secret was read
            # ...and is watched by name (RBAC resourceNames allow a metadata.name field selector);
            # a refused watch would log "RBAC: 403" (log_problems below).
            wait_for(lambda: secret_watches(cluster) >= 1, what="a watch on the Secret")
            wait_for(lambda: events_for(cluster.in_namespace(watched), "etl"), what="an Event in the watched namespace")
            time.sleep(3)  # several ticks: the other namespace's policy stays untouched
            untouched = cluster.in_namespace(other).get_json("pwpp", "etl")
            assert "status" not in untouched and not untouched["metadata"].get("finalizers")
        assert log_problems(log) == []

        assert_can(
            sa,
            allowed=[
                ("get", "secrets/prefect-auth", "-n", watched), ("list", PWPP, "-n", watched),
                ("list", "secrets/prefect-auth", "-n", watched), ("watch", "secrets/prefect-auth", "-n", watched),
                ("patch", PWPP, "--subresource=status", "-n", watched), ("create", "events", "-n", watched),
                ("list", "namespaces"), ("watch", "namespaces"),  # kopf resolves PWO_NAMESPACES (docs/rbac.md)
            ],
            denied=[
                ("get", "secrets/prefect-auth", "-n", other), ("get", "secrets/other-secret", "-n", watched),
                ("get", "secrets", "-n", rel_ns), ("list", "secrets", "-n", watched),
                ("list", PWPP, "-A"), ("list", PWPP, "-n", other), ("patch", PWPP, "-n", other),
                ("create", "events", "-n", other), ("get", "namespaces"), ("patch", "namespaces"),
                ("delete", "pods", "-n", watched), ("delete", "deployments.apps", "-n", rel_ns),
                ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
            ],
        )

        # -- upgrade: serve the other namespace too
        values["watchNamespaces[1]"] = other
        helm.run("upgrade", name, str(CHART), "-n", rel_ns, *sets(values))
        assert kinds(helm.manifest(name, rel_ns)) == {
            ("ServiceAccount", fullname, rel_ns),
            ("Deployment", fullname, rel_ns),
            ("Role", scoped, watched),
            ("RoleBinding", scoped, watched),
            ("Role", scoped, other),
            ("RoleBinding", scoped, other),
            ("ClusterRole", f"{scoped}-discovery", None),
            ("ClusterRoleBinding", f"{scoped}-discovery", None),
            ("Role", f"{fullname}-leader-election", rel_ns),
            ("RoleBinding", f"{fullname}-leader-election", rel_ns),
            ("FlowSchema", f"{scoped}-leader-election", None),
        }
        assert can_i(sa, "get", "secrets/prefect-auth", "-n", other)
        chart_env = deployment_env(cluster, rel_ns, fullname)
        assert chart_env["PWO_NAMESPACES"] == f"{watched},{other}"
        log = tmp_path / "operator-upgraded.log"
        # The new Pod: the old one released the Lease as it stopped, so this one leads at once.
        with operator_as_pod(chart_env, pathlib.Path(sa.kubeconfig), log, rel_ns, pod="pod-1"):
            wait_for(reconciled(cluster.in_namespace(other), "etl"), timeout=60, what="newly watched policy Ready")
        assert log_problems(log) == []

        helm.run("uninstall", name, "-n", rel_ns, *NO_NODE)
        for namespace in (watched, other):
            assert not_found(cluster, "-n", namespace, "role", scoped)
            assert condition(cluster.in_namespace(namespace).get_json("pwpp", "etl"), "Ready")["status"] == "True"


def test_replicas_and_shards_release(cluster: Kubectl, helm: Helm, prefect_server, tmp_path: pathlib.Path) -> None:
    """replicaCount 2 and three shards: a Deployment, PDB and Lease each; every replica runs with the
    ServiceAccount's token, each shard's leader cycles exactly its policies."""
    rel_ns, team = unique("pwo"), unique("team")
    name = "pwo"
    fullname = f"{name}-prefect-workpool-operator"
    values = {"operator.tickSeconds": "1", "replicaCount": "2", "shards": "{blue,green}"}
    shard_names = {"default": fullname, "blue": f"{fullname}-blue", "green": f"{fullname}-green"}
    with namespaces(cluster, rel_ns, team), release(helm, name, rel_ns, *sets(values)):
        installed = kinds(helm.manifest(name, rel_ns))
        for deployment in shard_names.values():
            assert {("Deployment", deployment, rel_ns), ("PodDisruptionBudget", deployment, rel_ns)} <= installed
            assert cluster.in_namespace(rel_ns).get_json("deployment", deployment)["spec"]["replicas"] == 2
        ns = cluster.in_namespace(team)
        for shard in shard_names:
            doc = yaml.safe_load(policy(f"p-{shard}", prefect_server.api_url, unique("absent")))
            if shard != "default":
                doc["metadata"]["labels"] = {"prefectops.dev/shard": shard}
            ns.apply(yaml.safe_dump(doc))
        sa = service_account_kubeconfig(cluster, rel_ns, fullname, tmp_path / "sa.kubeconfig")
        with contextlib.ExitStack() as stack:
            for shard, deployment in shard_names.items():
                chart_env = deployment_env(cluster, rel_ns, deployment)
                for i in range(2):
                    stack.enter_context(operator_as_pod(chart_env, pathlib.Path(sa.kubeconfig),
                                                        tmp_path / f"{deployment}-{i}.log", rel_ns, pod=f"{deployment}-{i}"))

            def owned() -> bool:
                owners = {s: (ns.get_json("pwpp", f"p-{s}").get("status") or {}).get("owner") or {} for s in shard_names}
                return all(o.get("shard") == s and o.get("pod", "").startswith(shard_names[s] + "-")
                           and o["pod"].removeprefix(shard_names[s] + "-") in {"0", "1"} for s, o in owners.items())

            wait_for(owned, timeout=60, what="each policy owned by a replica of its shard")
            leases = cluster.in_namespace(rel_ns).get_json("lease")["items"]
            holders = {lease["metadata"]["name"]: lease["spec"].get("holderIdentity") for lease in leases}
            assert set(holders) == set(shard_names.values())
            for deployment, held_by in holders.items():
                assert held_by in {f"{deployment}-0", f"{deployment}-1"}
        for log in tmp_path.glob("*.log"):
            assert log_problems(log) == [], log.name
        for deployment in shard_names.values():
            assert can_i(sa, "update", f"{LEASES}/{deployment}", "-n", rel_ns)
        assert not can_i(sa, "update", f"{LEASES}/{fullname}-red", "-n", rel_ns)


@pytest.mark.parametrize("values_file", ["ha-shards-values.yaml", "locked-down-values.yaml", "namespaced-values.yaml"])
def test_ci_values_install(cluster: Kubectl, helm: Helm, values_file: str) -> None:
    """The chart's ci/ value sets are accepted by a real API server (NetworkPolicy, topology
    spread, volumes, PDBs...). The monitoring set needs prometheus-operator's CRDs, which this
    control plane does not have; its objects are checked offline (tests/unit/deploy/test_alerts.py)."""
    rel_ns = unique("pwo")
    path = CHART / "ci" / values_file
    watched = yaml.safe_load(path.read_text()).get("watchNamespaces", [])
    existing = [n for n in watched if cluster.run("get", "namespace", n, check=False).returncode == 0]
    with namespaces(cluster, rel_ns, *[n for n in watched if n not in existing]), \
            release(helm, "pwo", rel_ns, "-f", str(path)):
        installed = kinds(helm.manifest("pwo", rel_ns))
        for kind, name, namespace in installed:
            args = ["get", kind.lower(), name] + (["-n", namespace] if namespace else [])
            assert cluster.run(*args, check=False).returncode == 0, (kind, name)
        if values_file == "locked-down-values.yaml":
            assert ("NetworkPolicy", "pwo-prefect-workpool-operator", rel_ns) in installed
            deployment = cluster.in_namespace(rel_ns).get_json("deployment", "pwo-prefect-workpool-operator")
            assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
                "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        if values_file == "ha-shards-values.yaml":
            assert sum(1 for kind, _, _ in installed if kind == "PodDisruptionBudget") == 3


def test_upgrading_md_scaling_mode_off_to_disabled(cluster: Kubectl, tmp_path: pathlib.Path) -> None:
    """UPGRADING.md's 0.2.0 procedure on a real API server: a policy stored with `mode: Off` under
    the 0.1 schema (the chart's CRD with 0.1's enum), the new CRD applied, the documented patch."""
    crd_text = (CHART / "crds" / f"{CRD_NAME}.yaml").read_text()
    old = yaml.safe_load(crd_text)
    mode = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["scaling"][
        "properties"]["mode"]
    assert "Disabled" in mode["enum"] and "Off" not in mode["enum"]
    mode["enum"] = ["DesiredCount", "CloudWatchMetric", "Off"]  # 0.1's
    team = unique("team")

    def manifest(name: str, value: str) -> str:
        return yaml.safe_dump({
            "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy", "metadata": {"name": name},
            "spec": {"prefect": {"apiUrl": "http://127.0.0.1:1/api", "workPool": "p"},
                     "scaling": {"mode": value, "minWorkers": 0, "maxWorkers": 2}},
        })

    try:
        cluster("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(old))
        with namespaces(cluster, team):
            ns = cluster.in_namespace(team)
            wait_for(lambda: ns.run("apply", "-f", "-", stdin=manifest("report-only", "Off"), check=False).returncode == 0,
                     timeout=30, what="the 0.1 schema in force")
            refused = ns.run("apply", "-f", "-", stdin=manifest("early", "Disabled"), check=False)
            assert refused.returncode != 0, "0.1's schema must refuse Disabled: the patch comes after the new CRD"
            # The listing step (UPGRADING.md uses jq on the same JSON).
            listed = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in cluster.get_json("pwpp", "-A")["items"]
                      if p["spec"].get("scaling", {}).get("mode") == "Off"]
            assert f"{team}/report-only" in listed
            if shutil.which("jq"):  # the exact filter UPGRADING.md gives
                jq = subprocess.run(["jq", "-r", '.items[] | select(.spec.scaling.mode == "Off") | '
                                     '"\\(.metadata.namespace)/\\(.metadata.name)"'],
                                    input=cluster("get", "pwpp", "-A", "-o", "json"), capture_output=True, text=True)
                assert jq.returncode == 0 and jq.stdout.split() == listed, jq.stdout + jq.stderr
            cluster("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_text)
            wait_for(lambda: ns.run("apply", "-f", "-", stdin=manifest("new", "Off"), check=False).returncode != 0,
                     timeout=30, what="the 0.2 schema in force (Off refused)")
            ns("patch", "pwpp", "report-only", "--type=merge", "-p", '{"spec":{"scaling":{"mode":"Disabled"}}}')
            assert ns.get_json("pwpp", "report-only")["spec"]["scaling"]["mode"] == "Disabled"
    finally:
        cluster("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd_text)
