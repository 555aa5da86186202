"""A fleet's first writes on a real API server: none of them is rejected.

kopf adds its finalizer to a new policy with a JSON patch pinned to the resourceVersion
it saw (a `test` op), as it starts the policy's timer. The timer's first call wrote the
ownership claim to the status at once; landing first, it changed the resourceVersion and
the API server answered kopf's patch 422 (kopf sent it again at the next event). Seen as
113-197 `PATCH prefectworkpoolpolicies 422` per 1,000 policies in bench/fleet.py. The
operator now writes nothing to a policy before kopf's finalizer is on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
import yaml

from sandbox.prefect_seed import PrefectSeeder
from sandbox.processes import free_port
from sandbox.processes import operator_process as run_operator
from tests.support.names import unique
from tests.support.kubectl import Kubectl, wait_for

pytestmark = pytest.mark.e2e

FINALIZER = "prefectops.dev/finalizer"
POLICIES = 40


def rejected_policy_patches(kubectl: Kubectl) -> float:
    """PATCHes of policies (any subresource) the API server answered 422, all clients."""
    text = kubectl("get", "--raw", "/metrics")
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("apiserver_request_total{") and 'resource="prefectworkpoolpolicies"' in line
               and 'verb="PATCH"' in line and 'code="422"' in line)


@pytest.fixture
def fresh_operator(kubectl: Kubectl, namespace: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An operator that has just started (its first interval: each policy's first call claims
    it in the status and waits for the policy's phase) and watches only ``namespace``."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    port = free_port()
    env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig, "PWO_NAMESPACES": namespace, "PWO_METRICS_PORT": str(port),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with run_operator(env, log):
        wait_for(lambda: re.search(r" is leader", log.read_text()), what="the operator leading its shard")
        yield namespace


def test_no_write_to_a_new_policy_is_rejected(kubectl: Kubectl, fresh_operator: str, prefect_server) -> None:
    ns = kubectl.in_namespace(fresh_operator)
    pool = unique("pool")
    with PrefectSeeder(prefect_server.api_url) as seeder:
        seeder.create_ecs_pool(pool)
    before = rejected_policy_patches(kubectl)
    ns.apply("\n---\n".join(yaml.safe_dump({
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy", "metadata": {"name": f"p-{i}"},
        "spec": {"prefect": {"apiUrl": prefect_server.api_url, "workPool": pool}, "interval": "30s"},
    }) for i in range(POLICIES)))

    def claimed_and_finalized() -> list[dict] | None:
        items = ns.get_json("pwpp")["items"]
        done = [p for p in items if (p.get("status") or {}).get("owner") and FINALIZER in p["metadata"].get("finalizers", [])]
        return items if len(done) == POLICIES else None

    wait_for(claimed_and_finalized, what="every policy claimed and finalized")
    assert rejected_policy_patches(kubectl) - before == 0
