"""The Helm chart, offline: lint, every supported value combination rendered, bad values
rejected, its crds/ identical to the generated ones, and its defaults matching the image.

The rendered RBAC is compared rule by rule with what the operator is known to need
(docs/rbac.md; tests/e2e/test_helm.py proves on an API server that it is enough).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from typing import Any

import pytest
import yaml

import prefect_workpool_operator
from sandbox.kube import build_tools

REPO = pathlib.Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "prefect-workpool-operator"
# helm's offline default is its build's client-go version; say which cluster we render for.
KUBE_VERSION = "1.34.0"
RELEASE, NAMESPACE = "pwo", "ops"
FULLNAME = f"{RELEASE}-prefect-workpool-operator"
SCOPED = f"{NAMESPACE}-{FULLNAME}"

POLICIES = ("prefectops.dev", "prefectworkpoolpolicies", ("list", "patch", "watch"), ())
STATUS = ("prefectops.dev", "prefectworkpoolpolicies/status", ("patch",), ())
EVENTS = ("", "events", ("create",), ())
SECRETS = ("", "secrets", ("get", "list", "watch"), ())  # list+watch: the Secret cache (kube/secrets.py)
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"), ())
NAMESPACES = ("", "namespaces", ("list", "watch"), ())
LEADER = f"{FULLNAME}-leader-election"
# Leader election: create any Lease (no name is known before it exists), the rest by name only.
LEASES = {("coordination.k8s.io", "leases", ("create",), ()),
          ("coordination.k8s.io", "leases", ("get", "patch", "update"), (FULLNAME,))}
FLOW_SCHEMA = ("FlowSchema", f"{SCOPED}-leader-election", None)
LEADER_OBJECTS = {("Role", LEADER, NAMESPACE), ("RoleBinding", LEADER, NAMESPACE), FLOW_SCHEMA}
POD_ENV = {
    "PWO_LEASE_NAME": FULLNAME, "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
    "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(build_tools() / "helm")


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, values: dict[str, Any] | None = None, tmp: pathlib.Path | None = None,
           hooks: bool = False) -> list[dict[str, Any]]:
    """The release's objects; with ``hooks``, also the `helm test` hook's."""
    proc = template(helm, values, tmp, hooks)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def template(helm: str, values: dict[str, Any] | None, tmp: pathlib.Path | None,
             hooks: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    if not hooks:
        args.append("--no-hooks")
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    return run_helm(helm, *args)


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")): d for d in docs}


def rules(doc: dict[str, Any]) -> set[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return {
        (group, resource, tuple(sorted(rule["verbs"])), tuple(rule.get("resourceNames", [])))
        for rule in doc["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


# -- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespaces={a,b}", "--set", "metrics.serviceMonitor.enabled=true"]],
                         ids=["defaults", "namespaced+serviceMonitor"])
def test_lint_is_clean(helm: str, values: list[str]) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# -- every supported combination renders, with exactly the RBAC it needs --------------------------


def test_cluster_wide_default(helm: str) -> None:
    docs = render(helm)
    objs = by_kind(docs)
    assert set(objs) == {
        ("ServiceAccount", FULLNAME, NAMESPACE), ("Deployment", FULLNAME, NAMESPACE),
        ("ClusterRole", SCOPED, None), ("ClusterRoleBinding", SCOPED, None),
        ("ClusterRole", f"{SCOPED}-discovery", None), ("ClusterRoleBinding", f"{SCOPED}-discovery", None),
    } | LEADER_OBJECTS
    assert rules(objs["ClusterRole", SCOPED, None]) == {POLICIES, STATUS, EVENTS, SECRETS}
    assert rules(objs["Role", LEADER, NAMESPACE]) == LEASES
    assert rules(objs["ClusterRole", f"{SCOPED}-discovery", None]) == {CRDS}  # kopf lists no namespaces here
    for binding in ("ClusterRoleBinding", SCOPED, None), ("ClusterRoleBinding", f"{SCOPED}-discovery", None):
        assert objs[binding]["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert env(docs) == {
        "PWO_NAMESPACES": "", "PWO_SECRET_WATCH": "namespace", "PWO_TICK_SECONDS": "5", "PWO_LIVENESS_ENDPOINT": "http://0.0.0.0:8081/healthz",
        "PWO_LOG_FORMAT": "json", "PWO_VERBOSE": "0", "PWO_METRICS_PORT": "8080", **POD_ENV,
    }


def test_deployment_is_hardened(helm: str) -> None:
    docs = render(helm)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    c = container(docs)
    # The new Pod is a ready standby before the old leader stops (and releases the Lease).
    assert spec["replicas"] == 1 and spec["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "liveness"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "privileged": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert {"name": "liveness", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert c["image"] == f"prefect-workpool-operator:{prefect_workpool_operator.__version__}"


def test_namespaced(helm: str, tmp_path: pathlib.Path) -> None:
    docs = render(helm, {"watchNamespaces": ["data", "ml"]}, tmp_path)
    objs = by_kind(docs)
    assert set(objs) == {
        ("ServiceAccount", FULLNAME, NAMESPACE), ("Deployment", FULLNAME, NAMESPACE),
        ("Role", SCOPED, "data"), ("RoleBinding", SCOPED, "data"),
        ("Role", SCOPED, "ml"), ("RoleBinding", SCOPED, "ml"),
        ("ClusterRole", f"{SCOPED}-discovery", None), ("ClusterRoleBinding", f"{SCOPED}-discovery", None),
    } | LEADER_OBJECTS
    for ns in ("data", "ml"):
        assert rules(objs["Role", SCOPED, ns]) == {POLICIES, STATUS, EVENTS, SECRETS}
        assert objs["RoleBinding", SCOPED, ns]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SCOPED}
    # The only cluster-scoped grant: kopf's read-only discovery. No Secrets, no policies.
    assert rules(objs["ClusterRole", f"{SCOPED}-discovery", None]) == {CRDS, NAMESPACES}
    assert env(docs)["PWO_NAMESPACES"] == "data,ml"


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "namespaced"])
def test_secret_names_restrict_reads(helm: str, tmp_path: pathlib.Path, namespaced: bool) -> None:
    values: dict[str, Any] = {"rbac": {"secretNames": ["prefect-auth", "prefect-cloud"]}}
    if namespaced:
        values["watchNamespaces"] = ["data"]
    objs = by_kind(render(helm, values, tmp_path))
    role = objs["Role", SCOPED, "data"] if namespaced else objs["ClusterRole", SCOPED, None]
    # Each named Secret is watched on its own (a metadata.name field selector, which RBAC
    # authorizes against resourceNames): the operator cannot enumerate Secrets.
    assert ("", "secrets", ("get", "list", "watch"), ("prefect-auth", "prefect-cloud")) in rules(role)
    assert SECRETS not in rules(role)
    assert env(render(helm, values, tmp_path))["PWO_SECRET_WATCH"] == "name"


def test_secret_watch_modes(helm: str, tmp_path: pathlib.Path) -> None:
    assert env(render(helm, {}, tmp_path))["PWO_SECRET_WATCH"] == "namespace"
    values = {"rbac": {"watchSecrets": False}}
    assert env(render(helm, values, tmp_path))["PWO_SECRET_WATCH"] == "off"
    role = by_kind(render(helm, values, tmp_path))["ClusterRole", SCOPED, None]
    assert ("", "secrets", ("get",), ()) in rules(role) and SECRETS not in rules(role)


@pytest.mark.parametrize("namespaced", [False, True], ids=["cluster-wide", "namespaced"])
def test_discovery_off_leaves_no_cluster_scoped_read(helm: str, tmp_path: pathlib.Path, namespaced: bool) -> None:
    values: dict[str, Any] = {"rbac": {"discovery": False}}
    if namespaced:
        values["watchNamespaces"] = ["data"]
    kinds = {k for k, _, _ in by_kind(render(helm, values, tmp_path))}
    # A FlowSchema grants nothing (it only orders the Lease requests): see test_lease_flow_schema.
    assert kinds == ({"ServiceAccount", "Deployment", "Role", "RoleBinding", "FlowSchema"} if namespaced else
                     {"ServiceAccount", "Deployment", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                      "FlowSchema"})


def test_lease_flow_schema(helm: str, tmp_path: pathlib.Path) -> None:
    """The Lease requests of the release's ServiceAccount, in the release namespace, at the
    leader-election priority level; off, or with RBAC managed elsewhere, no FlowSchema."""
    spec = by_kind(render(helm, {"serviceAccount": {"name": "ops"}, "shards": ["blue"]}, tmp_path))[FLOW_SCHEMA]["spec"]
    assert spec["priorityLevelConfiguration"] == {"name": "leader-election"}
    assert 0 < spec["matchingPrecedence"] < 9000  # before the built-in service-accounts FlowSchema
    assert spec["rules"] == [{
        "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": "ops", "namespace": NAMESPACE}}],
        "resourceRules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                           "verbs": ["get", "create", "update"], "namespaces": [NAMESPACE]}],
    }]
    for values in ({"leaseFlowSchema": {"enabled": False}}, {"rbac": {"create": False}}):
        assert not any(d["kind"] == "FlowSchema" for d in render(helm, values, tmp_path)), values
    refused = template(helm, {"leaseFlowSchema": {"matchingPrecedence": 9000}}, tmp_path)
    assert refused.returncode != 0 and "matchingPrecedence" in refused.stderr


def test_no_rbac_and_existing_service_account(helm: str, tmp_path: pathlib.Path) -> None:
    docs = render(helm, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "platform-ops"}},
                  tmp_path)
    assert [d["kind"] for d in docs] == ["Deployment"]
    assert docs[0]["spec"]["template"]["spec"]["serviceAccountName"] == "platform-ops"


def test_existing_service_account_still_bound(helm: str, tmp_path: pathlib.Path) -> None:
    objs = by_kind(render(helm, {"serviceAccount": {"create": False, "name": "platform-ops"}}, tmp_path))
    assert objs["ClusterRoleBinding", SCOPED, None]["subjects"][0]["name"] == "platform-ops"
    assert not any(kind == "ServiceAccount" for kind, _, _ in objs)


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"enabled": False}, set()),
        ({"enabled": True}, set()),
        ({"service": {"enabled": True}}, {"Service"}),
        ({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}, {"Service", "ServiceMonitor"}),
        ({"service": {"enabled": True}, "serviceMonitor": {"enabled": True}}, {"Service", "ServiceMonitor"}),
    ],
    ids=["off", "on", "service", "serviceMonitor", "both"],
)
def test_metrics(helm: str, tmp_path: pathlib.Path, metrics: dict[str, Any], expected: set[str]) -> None:
    docs = render(helm, {"metrics": metrics}, tmp_path)
    extra = {d["kind"] for d in docs} - {"ServiceAccount", "Deployment", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                          "FlowSchema"}
    assert extra == expected
    enabled = metrics.get("enabled", True)
    assert env(docs)["PWO_METRICS_PORT"] == ("8080" if enabled else "0")
    ports = {p["name"] for p in container(docs)["ports"]}
    assert ports == ({"liveness", "http-metrics"} if enabled else {"liveness"})
    objs = {d["kind"]: d for d in docs}
    if "Service" in expected:
        assert objs["Service"]["spec"]["ports"] == [
            {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}]
    if "ServiceMonitor" in expected:
        monitor = objs["ServiceMonitor"]
        assert monitor["spec"]["endpoints"] == [
            {"port": "http-metrics", "path": "/metrics", "honorLabels": True, "interval": "30s", "scrapeTimeout": "10s"}]
        # It selects exactly the metrics Service.
        assert monitor["spec"]["selector"]["matchLabels"].items() <= objs["Service"]["metadata"]["labels"].items()
        assert monitor["metadata"]["labels"].get("release") == metrics["serviceMonitor"].get("labels", {}).get("release")


def test_everything_set(helm: str, tmp_path: pathlib.Path) -> None:
    values = {
        "image": {"repository": "registry.example.com:5000/ops/pwo", "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"tickSeconds": 2.5, "logFormat": "plain", "verbose": True, "livenessPort": 9000},
        "metrics": {"port": 9100, "serviceMonitor": {"enabled": True, "interval": "1m", "scrapeTimeout": "20s"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/pwo"}},
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"},
                     {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "aws", "key": "id"}}}],
        "envFrom": [{"secretRef": {"name": "aws-credentials"}}],
        "podAnnotations": {"a": "b"}, "podLabels": {"team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {}}, "priorityClassName": "system-cluster-critical",
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    }
    docs = render(helm, values, tmp_path)
    c = container(docs)
    assert c["image"] == "registry.example.com:5000/ops/pwo@sha256:" + "a" * 64
    assert env(docs) == {
        "PWO_NAMESPACES": "", "PWO_SECRET_WATCH": "namespace", "PWO_TICK_SECONDS": "2.5", "PWO_LIVENESS_ENDPOINT": "http://0.0.0.0:9000/healthz",
        "PWO_LOG_FORMAT": "plain", "PWO_VERBOSE": "1", "PWO_METRICS_PORT": "9100", "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "aws", "key": "id"}}, **POD_ENV,
    }
    assert c["envFrom"] == [{"secretRef": {"name": "aws-credentials"}}]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "platform" and pod["metadata"]["annotations"] == {"a": "b"}
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/pwo"}
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["interval"] == "1m"


def test_replicas_and_shards(helm: str, tmp_path: pathlib.Path) -> None:
    """One Deployment per shard, each with its Lease and a PDB; the Role names every Lease."""
    objs = by_kind(render(helm, {"replicaCount": 2, "shards": ["blue", "green"]}, tmp_path))
    names = [FULLNAME, f"{FULLNAME}-blue", f"{FULLNAME}-green"]
    for name, shard in zip(names, ["default", "blue", "green"]):
        deployment = objs["Deployment", name, NAMESPACE]
        assert deployment["spec"]["replicas"] == 2
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector["prefectops.dev/operator-shard"] == shard
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert objs["PodDisruptionBudget", name, NAMESPACE]["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        pod_env = {e["name"]: e.get("value") for e in c["env"]}
        assert pod_env["PWO_LEASE_NAME"] == name
        assert pod_env.get("PWO_SHARD") == (None if shard == "default" else shard)
    assert ("coordination.k8s.io", "leases", ("get", "patch", "update"), tuple(names)) in rules(objs["Role", LEADER, NAMESPACE])
    # Selectors are disjoint: no Deployment adopts another shard's Pods.
    assert len({objs["Deployment", n, NAMESPACE]["spec"]["selector"]["matchLabels"]["prefectops.dev/operator-shard"] for n in names}) == 3
    assert not any(kind == "PodDisruptionBudget" for kind, _, _ in by_kind(render(helm, {}, tmp_path)))


def test_two_releases_never_share_cluster_scoped_names(helm: str) -> None:
    """One release per namespace set (docs/rbac.md): same release name, different namespaces."""
    names = []
    for namespace in ("ops-a", "ops-b"):
        proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION)
        names.append({d["metadata"]["name"] for d in yaml.safe_load_all(proc.stdout)
                      if d and d["kind"].startswith("Cluster")})
    assert names[0] and not names[0] & names[1]


def test_no_wildcards_and_no_destructive_verbs(helm: str, tmp_path: pathlib.Path) -> None:
    for values in ({}, {"watchNamespaces": ["a"]}):
        for doc in render(helm, values, tmp_path):
            for rule in doc.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], (doc["metadata"]["name"], rule)
                forbidden = {"delete", "deletecollection", "update", "escalate", "bind", "impersonate"}
                if rule["resources"] == ["leases"] and rule.get("resourceNames"):
                    forbidden.discard("update")  # renewing its own, named Lease
                assert not forbidden & set(rule["verbs"])


# -- bad values are rejected before anything reaches a cluster ---------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"watchNamespaces": "data"}, "watchNamespaces"),
        ({"watchNamespaces": ["Data_Team"]}, "watchNamespaces"),
        ({"watchNamespaces": ["data", "data"]}, "watchNamespaces"),
        ({"replicas": 2}, "replicas"),  # not a setting: replicaCount is
        ({"replicaCount": 0}, "replicaCount"),
        ({"shards": ["default"]}, "shards"),  # the default shard is always there
        ({"shards": ["Blue"]}, "shards"),
        ({"shards": ["a", "a"]}, "shards"),
        ({"operator": {"logFormat": "xml"}}, "logFormat"),
        ({"operator": {"tickSeconds": 0}}, "tickSeconds"),
        ({"operator": {"tickSeconds": "5"}}, "tickSeconds"),
        ({"operator": {"livenessPort": 70000}}, "livenessPort"),
        ({"metrics": {"port": 0}}, "port"),
        ({"metrics": {"enable": True}}, "enable"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "interval"),
        ({"image": {"tag": 1.0}}, "tag"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"image": {"digest": "sha256:abc"}}, "digest"),
        ({"image": {"repository": ""}}, "repository"),
        ({"rbac": {"secretName": ["x"]}}, "secretName"),
        ({"rbac": {"secretNames": ["Not A Name"]}}, "secretNames"),
        ({"rbac": {"create": "yes"}}, "create"),
        ({"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 123}}}, "annotations"),
        ({"serviceAccount": {"name": "Bad Name"}}, "name"),
        ({"extraEnv": [{"value": "no name"}]}, "extraEnv"),
        ({"extraEnv": {"AWS_REGION": "eu-west-1"}}, "extraEnv"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
        ({"podSecurityContext": {"runAsUser": 0}}, "runAsUser"),
        ({"resources": {"request": {"cpu": "1"}}}, "request"),
        # Rules across fields, checked by the templates:
        ({"metrics": {"port": 8081}}, "metrics.port and operator.livenessPort must differ"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "serviceMonitor.enabled needs metrics.enabled"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        ({"metrics": {"enabled": False}, "prometheusRule": {"enabled": True}}, "prometheusRule.enabled needs metrics.enabled"),
        ({"metrics": {"enabled": False}, "grafanaDashboard": {"enabled": True}}, "grafanaDashboard.enabled needs metrics.enabled"),
        ({"prometheusRule": {"disabledAlerts": ["NoSuchAlert"]}}, "disabledAlerts"),
        ({"prometheusRule": {"failingCyclesRatio": 2}}, "failingCyclesRatio"),
        ({"networkPolicy": {"aws": {"ports": []}}}, "ports"),
        ({"networkPolicy": {"prefect": {"to": [{"cidr": "10.0.0.0/8"}], "ports": [443]}}}, "cidr"),
        ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "topologySpreadConstraints"),
        ({"extraVolumeMounts": [{"name": "ca"}]}, "mountPath"),
        ({"tests": {"enable": True}}, "enable"),
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else "",
)
def test_bad_values_are_rejected(helm: str, tmp_path: pathlib.Path, values: dict[str, Any], complaint: str) -> None:
    proc = template(helm, values, tmp_path)
    assert proc.returncode != 0, f"accepted: {values}"
    assert complaint in proc.stderr, proc.stderr


# -- values.yaml is documented field by field, and the schema knows every field ---------------------


def documented_paths() -> tuple[list[str], list[str]]:
    """(every key path of values.yaml, the paths not preceded by a comment nor under a documented key)."""
    paths, undocumented = [], []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            commented = previous.lstrip().startswith("#")
            path = ".".join([k for _, k, _ in stack] + [key])
            paths.append(path)
            leaf = not line.rstrip().endswith(":")
            if leaf and not (commented or any(d for _, _, d in stack)):
                undocumented.append(path)
            stack.append((indent, key, commented))
        if line.strip():
            previous = line
    return paths, undocumented


def test_every_value_is_documented() -> None:
    paths, undocumented = documented_paths()
    assert len(paths) > 30 and undocumented == []


def helm_docs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(build_tools() / "helm-docs"), "--chart-search-root", str(CHART.parent), "--template-files", "README.md.gotmpl",
         "--sort-values-order", "file", "--log-level", "warning", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_chart_readme_is_generated_from_the_values() -> None:
    """The README's values table is helm-docs' rendering of values.yaml's comments (`make chart-docs`)."""
    proc = helm_docs("--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (CHART / "README.md").read_text(), "the chart README is out of date: run `make chart-docs`"
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| Key")]
    assert len(rows) > 60
    assert not [r for r in rows if r.rstrip().endswith("|  |") or r.rstrip().endswith("| |")], "a value without a description"


# -- every values file in examples/ and ci/ lints and renders ---------------------------------------------

VALUES_FILES = sorted([*(CHART / "ci").glob("*.yaml"), *(REPO / "examples").glob("*/values*.yaml")])


def values_file_problems(helm: str, path: pathlib.Path) -> list[str]:
    """`helm lint --strict` and `helm template`: lint alone reports a failing `fail` of the
    chart's validate template as [INFO] and passes, so the file is rendered too."""
    problems = []
    lint = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(path))
    if lint.returncode != 0 or "[WARNING]" in lint.stdout or "[ERROR]" in lint.stdout:
        problems.append(f"lint: {lint.stdout}{lint.stderr}")
    rendered = run_helm(helm, "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION, "-f", str(path))
    if rendered.returncode != 0:
        problems.append(f"template: {rendered.stderr}")
    return problems


@pytest.mark.parametrize("path", VALUES_FILES, ids=[str(p.relative_to(REPO)) for p in VALUES_FILES])
def test_values_file_lints_and_renders(helm: str, path: pathlib.Path) -> None:
    assert len(VALUES_FILES) >= 6
    assert values_file_problems(helm, path) == []


def test_lint_alone_passes_what_the_validate_template_rejects(helm: str, tmp_path: pathlib.Path) -> None:
    """Why values files are rendered as well: helm lint passes a file the chart refuses to install."""
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump({"metrics": {"port": 8081}}))  # the liveness port too
    assert run_helm(helm, "lint", "--strict", str(CHART), "-f", str(bad)).returncode == 0
    problems = values_file_problems(helm, bad)
    assert len(problems) == 1 and "must differ" in problems[0]


def test_schema_accepts_the_defaults_and_the_readme_examples() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


# -- one source for the CRD; chart and image agree ----------------------------------------------------


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*")}
    assert generated and shipped.keys() == generated.keys(), "run `make chart` (copies crds/ into the chart)"
    for name in generated:
        assert shipped[name] == generated[name], f"charts/.../crds/{name} differs from crds/{name}: run `make chart`"


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == prefect_workpool_operator.__version__


def test_image_matches_the_chart_defaults() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "pin the base image by full tag"
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user, "numeric USER, so the kubelet can check runAsNonRoot"
    assert int(user.group(1)) == values["podSecurityContext"]["runAsUser"] != 0
    assert int(user.group(2)) == values["podSecurityContext"]["runAsGroup"]
    assert "--constraint constraints.txt" in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "prefect_workpool_operator"]' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored  # an allow-list: nothing reaches the build but what it copies
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M))
    for sources in copied:
        for source in sources.split():
            assert f"!{source}" in ignored, f"{source} is copied but excluded by .dockerignore"


def test_kind_script_parses() -> None:
    script = REPO / "hack" / "kind-deploy.sh"
    assert script.stat().st_mode & 0o111, "executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_irsa_role_annotates_the_service_account(helm: str, tmp_path: pathlib.Path) -> None:
    arn = "arn:aws:iam::123456789012:role/prefect-workpool-operator"
    docs = render(helm, {"aws": {"irsaRoleArn": arn}, "serviceAccount": {"annotations": {"team": "platform"}}}, tmp_path)
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": arn, "team": "platform"}
    assert "annotations" not in next(d for d in render(helm) if d["kind"] == "ServiceAccount")["metadata"]
    assert template(helm, {"aws": {"irsaRoleArn": "not-an-arn"}}, tmp_path).returncode != 0


def test_network_policy(helm: str, tmp_path: pathlib.Path) -> None:
    assert not [d for d in render(helm) if d["kind"] == "NetworkPolicy"]  # opt-in
    (policy,) = [d for d in render(helm, {"networkPolicy": {"enabled": True}}, tmp_path) if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prefect-workpool-operator",
                                                  "app.kubernetes.io/instance": RELEASE}
    egress = [(sorted((p["port"], p["protocol"]) for p in rule["ports"]), rule.get("to")) for rule in spec["egress"]]
    assert egress == [
        ([(443, "TCP"), (6443, "TCP")], None), ([(443, "TCP"), (4200, "TCP")], None), ([(443, "TCP")], None),
        ([(53, "TCP"), (53, "UDP")], [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]),
    ]
    # Nothing else comes in than scrapes of the metrics port, and the helm test Pod.
    assert [r["ports"] for r in spec["ingress"]] == [
        [{"port": "http-metrics", "protocol": "TCP"}],
        [{"port": "liveness", "protocol": "TCP"}, {"port": "http-metrics", "protocol": "TCP"}]]
    test_pod = next(d for d in render(helm, hooks=True) if d["kind"] == "Pod")
    allowed = spec["ingress"][1]["from"][0]["podSelector"]["matchLabels"]
    assert allowed.items() <= test_pod["metadata"]["labels"].items()

    locked = yaml.safe_load((CHART / "ci" / "locked-down-values.yaml").read_text())
    (policy,) = [d for d in render(helm, locked, tmp_path) if d["kind"] == "NetworkPolicy"]
    rules = policy["spec"]["egress"]
    assert rules[0] == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]}
    assert rules[2]["to"] == [{"ipBlock": {"cidr": "10.0.128.0/24"}}]
    assert policy["spec"]["ingress"][0]["from"] == locked["networkPolicy"]["metricsFrom"]


def test_topology_spread_selects_each_shards_replicas(helm: str, tmp_path: pathlib.Path) -> None:
    spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    own = {**spread, "labelSelector": {"matchLabels": {"team": "x"}}}
    docs = render(helm, {"shards": ["blue"], "topologySpreadConstraints": [spread, own]}, tmp_path)
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]
        first, second = pod["spec"]["topologySpreadConstraints"]
        assert first == {**spread, "labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}}
        assert first["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert second == own  # a selector given is kept


def test_extra_volumes_and_mounts(helm: str, tmp_path: pathlib.Path) -> None:
    docs = render(helm, {"extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
                         "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}]}, tmp_path)
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["volumes"][-1] == {"name": "ca", "configMap": {"name": "corp-ca"}}
    assert container(docs)["volumeMounts"][-1] == {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}
    assert {"name": "tmp", "mountPath": "/tmp"} in container(docs)["volumeMounts"]


def test_helm_test_hook(helm: str, tmp_path: pathlib.Path) -> None:
    hooks = [d for d in render(helm, hooks=True) if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    service, pod = sorted(hooks, key=lambda d: d["kind"] != "Service")
    assert service["kind"] == "Service" and pod["kind"] == "Pod"
    assert int(service["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0  # before the Pod
    # The Service reaches the default shard's operator Pods on both ports.
    deployment = next(d for d in render(helm) if d["kind"] == "Deployment")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(8081, "liveness"), (8080, "http-metrics")}
    (c,) = pod["spec"]["containers"]
    assert c["image"] == container(render(helm))["image"]  # the operator's image: nothing else to pull
    # The Service's address from the kubelet's variables for it (no cluster DNS needed).
    host = "$(" + f"{FULLNAME}-test".upper().replace("-", "_") + "_SERVICE_HOST)"
    assert pod["spec"]["enableServiceLinks"] is True
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "HEALTH_URL": f"http://{host}:8081/healthz", "METRICS_URL": f"http://{host}:8080/metrics"}
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["automountServiceAccountToken"] is False
    # Without metrics only the health check; off altogether with tests.enabled false.
    (c,) = next(d for d in render(helm, {"metrics": {"enabled": False}}, tmp_path, hooks=True) if d["kind"] == "Pod")["spec"]["containers"]
    assert [e["name"] for e in c["env"]] == ["HEALTH_URL"]
    assert not [d for d in render(helm, {"tests": {"enabled": False}}, tmp_path, hooks=True) if d["kind"] == "Pod"]


def test_uninstall_hook(helm: str, tmp_path: pathlib.Path) -> None:
    """A pre-delete Job with its own ServiceAccount: it may delete the release's operator
    Deployments (by name, nothing else) and list pods in the release namespace, and list and
    patch policies where the release serves them; all of it goes once the Job succeeded."""
    for values, scopes in (({"shards": ["blue"]}, [None]), ({"watchNamespaces": ["a", "b"]}, ["a", "b"])):
        hooks = [d for d in render(helm, values, tmp_path, hooks=True)
                 if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "pre-delete"]
        assert all("hook-succeeded" in d["metadata"]["annotations"]["helm.sh/hook-delete-policy"] for d in hooks)
        objects = by_kind(hooks)
        job = objects[("Job", f"{FULLNAME}-uninstall", NAMESPACE)]
        weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
        assert weights["Job"] > max(w for k, w in weights.items() if k != "Job")  # its rights exist first
        spec = job["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == f"{FULLNAME}-uninstall" and spec["containers"][0]["args"] == ["uninstall"]
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        deployments = [d["metadata"]["name"] for d in render(helm, values, tmp_path) if d["kind"] == "Deployment"]
        assert env["PWO_UNINSTALL_DEPLOYMENTS"].split(",") == deployments
        assert env["PWO_NAMESPACES"] == ",".join(values.get("watchNamespaces", []))
        role = objects[("Role", f"{FULLNAME}-uninstall", NAMESPACE)]
        assert {(r["resources"][0], tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in role["rules"]} == {
            ("deployments", ("delete",), tuple(deployments)), ("pods", ("list",), ())}
        for scope in scopes:
            kind = "Role" if scope else "ClusterRole"
            policies = objects[(kind, f"{SCOPED}-uninstall", scope)]
            assert policies["rules"] == [{"apiGroups": ["prefectops.dev"], "resources": ["prefectworkpoolpolicies"],
                                          "verbs": ["list", "patch"]}]
            assert (kind + "Binding", f"{SCOPED}-uninstall", scope) in objects
        c = spec["containers"][0]["securityContext"]
        assert c["readOnlyRootFilesystem"] and c["capabilities"]["drop"] == ["ALL"] and c["runAsNonRoot"]
    assert not [d for d in render(helm, {"uninstallHook": {"enabled": False}}, tmp_path, hooks=True) if d["kind"] == "Job"]


def test_values_added_in_0_2_may_be_missing(helm: str) -> None:
    """`helm upgrade --reuse-values` from a release whose values predate the probe timings and
    the uninstall hook: the chart still renders, with the defaults (null removes a key)."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                    "--set", "operator.livenessProbe=null", "--set", "operator.readinessProbe=null",
                    "--set", "uninstallHook=null")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    c = container(docs)
    assert c["livenessProbe"]["periodSeconds"] == 20 and c["readinessProbe"]["periodSeconds"] == 10
    assert any(d["kind"] == "Job" and d["metadata"]["name"].endswith("-uninstall") for d in docs)
