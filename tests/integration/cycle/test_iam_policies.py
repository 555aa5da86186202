"""The IAM policies in deploy/iam/, one per mode, against what the operator really calls.

Each test drives whole cycles of one mode against a real Prefect server and moto, records
the operator's AWS requests (the botocore hook of tests/support/aws_operations.py) and checks both
ways: every request is allowed by that mode's policy — its action, and its resource ARN and
condition keys, placeholders filled in — and the policy grants no action the mode did not use.
(The session-wide check in tests/conftest.py adds: no test anywhere made an ungranted call.)
"""

from __future__ import annotations

import pytest

from sandbox.moto_server import MotoServer
from sandbox.prefect_seed import PrefectSeeder, late_state
from prefect_workpool_operator.cycle.clients import AwsConnection
from prefect_workpool_operator.cycle.memory import AutoscalingCache
from prefect_workpool_operator.cycle.release import release_on_delete
from tests.support.aws_operations import LOG, Call, allows, granted_actions, implied_calls, policy
from tests.support.ecs_sandbox import REGION, EcsSandbox
from tests.support.recovery import NoSecrets, clock_after
from tests.integration.cycle.test_ecs_cycle import Cycles, aws_env, body, close_clients, cond  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def check(name: str, calls: list[Call], cluster: str, service: str | None, **fill: str) -> None:
    doc = policy(name)
    assert calls, "the mode made no AWS call"
    calls = calls + implied_calls(calls)
    denied = [c for c in calls if not allows(doc, c, REGION, cluster, service, **fill)]
    assert denied == [], f"deploy/iam/{name}.json does not allow these requests"
    assert {c.action for c in calls} == granted_actions(doc), f"deploy/iam/{name}.json grants an unused action"
    # The evaluator can say no: the same requests against another cluster's policy are refused.
    assert not any(allows(doc, c, REGION, "another-cluster", "another-service", **fill) for c in calls
                   if c.action.startswith("ecs:"))


async def test_ecs_readonly_verification_and_report_only_scaling(
    seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox
) -> None:
    """Stale runs checked against ECS (a pid: DescribeTasks; none: ListTasks + DescribeTasks by tag)
    and scaling.mode Disabled (DescribeServices, nothing written)."""
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    runs = seeder.create_runs(deployment, 2, {"type": "PENDING"})
    arn = sandbox.run(cluster, run_id=runs[0])[0]
    seeder._request("PATCH", f"/flow_runs/{runs[0]}", json={"infrastructure_pid": f"{cluster}::{arn}"})
    sandbox.run(cluster, run_id=runs[1])  # no pid: found by its tag
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, staleRuns={"pendingTimeout": "30s"},
                         scaling={"mode": "Disabled", "minWorkers": 1, "maxWorkers": 2}))
    with LOG.capture() as calls:
        outcome = await cycles.run(clock_after(seeder, runs))
    assert cond(outcome.status, "Scaling") == ("True", "ReportOnly")
    assert outcome.status["staleRuns"]["skipped"]["infrastructureAlive"] == 2
    check("ecs-readonly", calls, cluster, service)


async def test_desired_count(seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.create_runs(deployment, 4, late_state(120))
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service,
                         scaling={"mode": "DesiredCount", "minWorkers": 0, "maxWorkers": 3}))
    with LOG.capture() as calls:
        outcome = await cycles.run()
    assert cond(outcome.status, "Scaling")[1] in ("ScaledFromZero", "ScaledUp")
    check("desired-count", calls, cluster, service)


async def test_cloudwatch_metric(seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster = sandbox.cluster()
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, None,
                         scaling={"mode": "CloudWatchMetric", "metricNamespace": "Platform/Prefect"}))
    with LOG.capture() as calls:
        outcome = await cycles.run()
    assert cond(outcome.status, "Scaling") == ("True", "MetricPublished")
    check("cloudwatch-metric", calls, cluster, None, metric_namespace="Platform/Prefect")
    assert not allows(policy("cloudwatch-metric"), calls[0], REGION, cluster, None, metric_namespace="Prefect")


async def managed_mode_calls(seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox,
                             mode: str) -> tuple[list[Call], str, str, str]:
    """A managed mode's whole life: creation, steady cycles (every read of the rotation,
    drift corrected), then the policy's deletion removing what it created. The policy's name
    is the test's own: StepScaling alarms another test left under a shared name would be
    ours to remove, and so calls this mode's policy need not grant."""
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.create_runs(deployment, 2, late_state(120))
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    policy_body = body(seeder.api_url, pool_name, moto, cluster, service,
                       scaling={"mode": mode, "minWorkers": 1, "maxWorkers": 4, "metricNamespace": "Platform/Prefect"})
    name = policy_body["metadata"]["name"] = f"ecs-{pool_name}"
    cycles = Cycles(policy_body)
    rid = f"service/{cluster}/{service}"
    with LOG.capture() as calls:
        first = await cycles.run()
        assert cond(first.status, "Scaling") == ("True", "AutoscalingChanged")
        sandbox.autoscaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=rid,
                                                     ScalableDimension="ecs:service:DesiredCount",
                                                     MinCapacity=0, MaxCapacity=20)
        for _ in range(5):  # one turn of the read rotation (target, policies, alarms, activity) and more
            await cycles.run()
        connection = AwsConnection()
        try:
            removed = await release_on_delete(cycles.body, AutoscalingCache(), connection, NoSecrets())
        finally:
            connection.close()
    assert [e[1] for e in removed] == ["AutoscalingRemoved"]
    assert sandbox.autoscaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[rid])["ScalableTargets"] == []
    return calls, cluster, service, name


async def test_target_tracking(seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    calls, cluster, service, name = await managed_mode_calls(seeder, pool_name, moto, sandbox, "TargetTracking")
    check("target-tracking", calls, cluster, service, metric_namespace="Platform/Prefect", policy_name=name)


async def test_step_scaling(seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    calls, cluster, service, name = await managed_mode_calls(seeder, pool_name, moto, sandbox, "StepScaling")
    check("step-scaling", calls, cluster, service, metric_namespace="Platform/Prefect", policy_name=name)
    # Our alarms only: another policy's (another name) are refused.
    alarm_writes = [c for c in calls if c.action == "cloudwatch:PutMetricAlarm"]
    assert alarm_writes and not any(allows(policy("step-scaling"), c, REGION, cluster, service, policy_name="other")
                                    for c in alarm_writes)


def test_every_policy_file_has_a_mode_test() -> None:
    """A new policy (e.g. for the TargetTracking/StepScaling modes) needs its test here."""
    import pathlib

    from tests.support.aws_operations import POLICIES

    tested = {"ecs-readonly", "desired-count", "cloudwatch-metric", "target-tracking", "step-scaling"}
    assert {p.stem for p in pathlib.Path(POLICIES).glob("*.json")} == tested
