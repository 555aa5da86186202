"""The API server itself rejects invalid policies, with messages a person can act on."""

from __future__ import annotations

import pytest
import yaml

from tests.support.kubectl import Kubectl

pytestmark = pytest.mark.e2e


def policy(spec: dict) -> str:
    return yaml.safe_dump({
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
        "metadata": {"name": "bad"}, "spec": spec,
    })


GOOD = {"prefect": {"apiUrl": "http://127.0.0.1:4200/api", "workPool": "ecs"}}
# The rejected specs are catalogued, with every other class of bad input, in test_catalogue.py.


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
