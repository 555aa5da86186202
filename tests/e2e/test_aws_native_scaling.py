"""The operator process manages AWS-native scaling on a real API server (Prefect real, AWS moto):
what `kubectl describe` shows, and deletion removing what the operator created."""

from __future__ import annotations

import pytest

from sandbox.prefect_seed import PrefectSeeder, late_state
from tests.support.names import unique
from tests.e2e.test_operator import policy
from tests.support.kubectl import Kubectl, condition, wait_for

pytestmark = pytest.mark.e2e


def test_step_scaling_shown_then_removed_on_delete(kubectl: Kubectl, namespace: str, operator_process,
                                                   prefect_server, moto, sandbox) -> None:
    ns = kubectl.in_namespace(namespace)
    pool = unique("pool")
    with PrefectSeeder(prefect_server.api_url) as seeder:
        seeder.create_ecs_pool(pool)
        deployment = seeder.create_deployment(pool, name=f"d-{pool}")
        seeder.create_runs(deployment, 2, late_state(120))
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    rid = f"service/{cluster}/{service}"
    ecs = {"region": "us-east-1", "cluster": cluster, "service": service, "endpointUrl": moto.endpoint_url}
    ns.apply(policy("native", prefect_server.api_url, pool, ecs=ecs,
                    scaling={"mode": "StepScaling", "minWorkers": 0, "maxWorkers": 4}))

    def managed():
        obj = ns.get_json("pwpp", "native")
        cond = condition(obj, "Scaling")
        return obj if cond and cond["reason"] in ("AutoscalingReady", "AutoscalingChanged") else None

    obj = wait_for(managed, what="Scaling managed")
    assert obj["status"]["scaling"]["autoscaling"]["ownedTarget"] is True
    described = ns("describe", "pwpp", "native")
    for text in ("Scalable Target", f"{rid} min 0 max 4", "Published", "Alarms",
                 f"prefectops-{namespace}-native-backlog-high"):
        assert text in described, text
    found = sandbox.autoscaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=rid)["ScalingPolicies"]
    assert len(found) == 2

    ns("delete", "pwpp", "native", "--timeout=60s")
    assert sandbox.autoscaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[rid])["ScalableTargets"] == []
    assert sandbox.autoscaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=rid)["ScalingPolicies"] == []
    prefix = f"prefectops-{namespace}-native-"
    assert sandbox.cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"] == []
