"""The API server itself rejects invalid policies, with messages a person can act on."""

from __future__ import annotations

import pytest
import yaml

from tests.kubectl import Kubectl

pytestmark = pytest.mark.e2e


def policy(spec: dict) -> str:
    return yaml.safe_dump({
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
        "metadata": {"name": "bad"}, "spec": spec,
    })


GOOD = {"prefect": {"apiUrl": "http://127.0.0.1:4200/api", "workPool": "ecs"}}
ECS = {"region": "us-east-1", "cluster": "prefect", "service": "prefect-worker"}

# (case, spec, fragment of the API server's message)
INVALID = [
    ("missing workPool", {"prefect": {"apiUrl": "http://x/api"}}, "spec.prefect.workPool: Required value"),
    ("missing prefect", {"interval": "30s"}, "spec.prefect: Required value"),
    ("non-http apiUrl", {"prefect": {**GOOD["prefect"], "apiUrl": "ftp://x/api"}}, "spec.prefect.apiUrl"),
    ("credentials in apiUrl", {"prefect": {**GOOD["prefect"], "apiUrl": "https://u:p@x/api"}}, "spec.prefect.apiUrl"),
    ("empty workPool", {"prefect": {**GOOD["prefect"], "workPool": ""}}, "spec.prefect.workPool"),
    ("interval too short (CEL)", {**GOOD, "interval": "5s"}, "interval must be at least 10s"),
    ("interval not a duration", {**GOOD, "interval": "soon"}, "spec.interval"),
    ("two auth methods (CEL)", {"prefect": {**GOOD["prefect"], "auth": {
        "apiKeySecretRef": {"name": "a", "key": "k"}, "basicAuthSecretRef": {"name": "b", "key": "k"}}}},
     "set at most one of apiKeySecretRef and basicAuthSecretRef"),
    ("secret ref without key", {"prefect": {**GOOD["prefect"], "auth": {"apiKeySecretRef": {"name": "a"}}}},
     "spec.prefect.auth.apiKeySecretRef.key: Required value"),
    ("request timeout out of range (CEL)", {"prefect": {**GOOD["prefect"], "requestTimeout": "10m"}},
     "requestTimeout must be between 1s and 2m"),
    ("duplicate queue", {"prefect": {**GOOD["prefect"], "workQueues": ["a", "a"]}}, "Duplicate value"),
    ("unknown field", {**GOOD, "staleRun": {}}, 'unknown field "spec.staleRun"'),
    ("wrong type", {**GOOD, "suspend": "yes"}, "spec.suspend"),
    ("pendingTimeout too short (CEL)", {**GOOD, "staleRuns": {"pendingTimeout": "10s"}}, "pendingTimeout must be at least 30s"),
    ("hardTimeout not after pendingTimeout (CEL)", {**GOOD, "staleRuns": {"pendingTimeout": "2h", "hardTimeout": "1h"}},
     "hardTimeout must be longer than pendingTimeout"),
    ("live-claimer override without hardTimeout (CEL)",
     {**GOOD, "staleRuns": {"hardTimeoutOverridesLiveClaimer": True}}, "hardTimeoutOverridesLiveClaimer needs hardTimeout"),
    ("unknown recovery action", {**GOOD, "staleRuns": {"action": "Delete"}}, "spec.staleRuns.action"),
    ("minWorkers above maxWorkers (CEL)", {**GOOD, "ecs": ECS, "scaling": {"minWorkers": 5, "maxWorkers": 2}},
     "minWorkers must not exceed maxWorkers"),
    ("DesiredCount without a service (CEL)", {**GOOD, "ecs": {"region": "us-east-1", "cluster": "c"}, "scaling": {}},
     "scaling.mode DesiredCount needs spec.ecs with a service"),
    ("CloudWatchMetric without ecs (CEL)", {**GOOD, "scaling": {"mode": "CloudWatchMetric"}},
     "scaling.mode CloudWatchMetric needs spec.ecs"),
    ("bad region", {**GOOD, "ecs": {**ECS, "region": "Mars"}}, "spec.ecs.region"),
]


@pytest.mark.parametrize(("case", "spec", "fragment"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_policy_is_rejected(kubectl: Kubectl, namespace: str, case: str, spec: dict, fragment: str) -> None:
    proc = kubectl.in_namespace(namespace).run("apply", "-f", "-", stdin=policy(spec), check=False)
    assert proc.returncode != 0, f"{case}: accepted"
    assert fragment in proc.stderr, proc.stderr


def test_valid_policy_is_accepted_with_defaults(kubectl: Kubectl, namespace: str) -> None:
    ns = kubectl.in_namespace(namespace)
    ns.apply(policy(GOOD))
    spec = ns.get_json("pwpp", "bad")["spec"]
    assert spec["interval"] == "30s" and spec["suspend"] is False and spec["dryRun"] is False
    assert spec["prefect"]["requestTimeout"] == "10s"


def test_kubectl_explain_shows_field_descriptions(kubectl: Kubectl) -> None:
    text = kubectl("explain", "pwpp.spec.prefect.auth.basicAuthSecretRef")
    assert "PREFECT_SERVER_API_AUTH_STRING" in text
    assert "at least 10s" in kubectl("explain", "pwpp.spec.interval")
