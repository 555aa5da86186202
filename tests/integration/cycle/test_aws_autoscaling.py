"""TargetTracking and StepScaling modes against moto (Application Auto Scaling, CloudWatch) and a real Prefect.

moto stores what we send and lets us read it back; it never evaluates alarms or policies
(desiredCount never moves) and has no DescribeScalingActivities or ListTagsForResource for
Application Auto Scaling. These tests check what the operator sends and owns.
"""

from __future__ import annotations

import datetime as dt

import pytest

from prefect_workpool_operator.cycle.clients import AwsConnection
from prefect_workpool_operator.cycle.memory import AutoscalingCache
from prefect_workpool_operator.cycle.release import release_on_delete
from sandbox.processes import free_port
from sandbox.moto_server import MotoServer
from sandbox.prefect_seed import PrefectSeeder, late_state, utcnow
from tests.support.ecs_sandbox import EcsSandbox
from tests.support.recovery import NoSecrets
from tests.integration.cycle.test_ecs_cycle import Cycles, aws_env, body, close_clients, cond  # noqa: F401

pytestmark = pytest.mark.integration
DIM = "ecs:service:DesiredCount"
PREFIX = "prefectops-ns-ecs"


def world(sandbox: EcsSandbox) -> tuple[str, str, str]:
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    return cluster, service, f"service/{cluster}/{service}"


def targets(sandbox: EcsSandbox, rid: str) -> list[tuple[int, int]]:
    found = sandbox.autoscaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[rid])["ScalableTargets"]
    return [(t["MinCapacity"], t["MaxCapacity"]) for t in found]


def policies(sandbox: EcsSandbox, rid: str) -> dict[str, dict]:
    found = sandbox.autoscaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=rid)["ScalingPolicies"]
    return {p["PolicyName"]: p for p in found}


def alarms(sandbox: EcsSandbox, prefix: str = PREFIX) -> dict[str, dict]:
    return {a["AlarmName"]: a for a in sandbox.cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]}


def writes(moto: MotoServer, before: dict[str, int]) -> dict[str, int]:
    after = moto.calls()
    made = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return made


def managed_events(events) -> list[str]:
    return [e.reason for e in events if e.reason in ("AutoscalingCreated", "AutoscalingDriftCorrected",
                                                     "AutoscalingRemoved")]


WRITE_OPS = ("RegisterScalableTarget", "PutScalingPolicy", "PutMetricAlarm", "DeleteAlarms", "DeleteScalingPolicy",
             "DeregisterScalableTarget")


def write_count(made: dict[str, int]) -> int:
    return sum(n for k, n in made.items() if k.rsplit(".", 1)[-1] in WRITE_OPS)


async def test_target_tracking_creates_its_resources_then_writes_nothing(
        seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    scaling = {"mode": "TargetTracking", "minWorkers": 2, "maxWorkers": 6, "backlogPerWorker": 4,
               "scaleUpCooldown": "30s", "scaleDownCooldown": "5m", "metricNamespace": f"TT-{pool_name}"}
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling=scaling))
    first = await cycles.run()
    assert cond(first.status, "Scaling") == ("True", "AutoscalingChanged")
    assert targets(sandbox, rid) == [(2, 6)]
    made = policies(sandbox, rid)
    assert list(made) == [f"{PREFIX}-target"]
    config = made[f"{PREFIX}-target"]["TargetTrackingScalingPolicyConfiguration"]
    assert (config["TargetValue"], config["ScaleOutCooldown"], config["ScaleInCooldown"]) == (4.0, 30, 300)
    metrics = config["CustomizedMetricSpecification"]["Metrics"]
    assert metrics[-1]["Expression"] == "(backlog) / tasks" and metrics[-1]["ReturnData"] is True
    assert metrics[0]["MetricStat"]["Metric"] == {"Namespace": f"TT-{pool_name}", "MetricName": "BacklogRuns",
                                                  "Dimensions": [{"Name": "WorkPool", "Value": pool_name}]}
    assert metrics[1]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    assert managed_events(first.events) == ["AutoscalingCreated"]
    autoscaling = first.status["scaling"]["autoscaling"]
    assert autoscaling["ownedTarget"] is True and autoscaling["scalableTarget"] == f"{rid} min 2 max 6"
    assert first.status["scaling"]["published"]["value"] == 0

    per_cycle, figures = [], []
    for _ in range(7):  # more than one turn of the read rotation
        before = moto.calls()
        outcome = await cycles.run()
        figures.append(outcome.status["scaling"])
        made_calls = writes(moto, before)
        per_cycle.append(made_calls)
        assert write_count(made_calls) == 0, made_calls
        assert cond(outcome.status, "Scaling") == ("True", "AutoscalingReady")
        assert managed_events(outcome.events) == []
    print(f"\nsteady TargetTracking cycles, AWS calls each: {per_cycle}")
    assert figures[-1] == figures[-2]  # nothing moves in the status (no Kubernetes write) while nothing changes
    assert [a["name"] for a in figures[-1]["autoscaling"]["alarms"]] == \
        [a["AlarmName"] for a in policies(sandbox, rid)[f"{PREFIX}-target"]["Alarms"]]  # AWS's TT alarms, with states
    activity = [c for c in per_cycle if any(k.endswith("DescribeScalingActivities") for k in c)]
    assert len(activity) == 1  # moto lacks it (botocore retries its error): asked once, then never again
    for made_calls in per_cycle:
        assert sum(n for k, n in made_calls.items() if k.endswith("PutMetricData")) == 1
        if made_calls not in activity:
            assert sum(n for k, n in made_calls.items() if not k.endswith("PutMetricData")) == 1, made_calls


async def test_step_scaling_scales_from_zero_on_the_raw_backlog(
        seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=f"d-{pool_name}")
    seeder.create_runs(deployment, 2, late_state(120))
    cluster, service, rid = world(sandbox)
    scaling = {"mode": "StepScaling", "minWorkers": 0, "maxWorkers": 8, "scaleDownStabilization": "3m",
               "maxStepDown": 2, "metricNamespace": f"SS-{pool_name}"}
    outcome = await Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling=scaling)).run()
    assert cond(outcome.status, "Scaling") == ("True", "AutoscalingChanged")
    assert targets(sandbox, rid) == [(0, 8)]  # MinCapacity 0: the step alarm watches the raw backlog
    made = policies(sandbox, rid)
    assert sorted(made) == [f"{PREFIX}-step-in", f"{PREFIX}-step-out"]
    out = made[f"{PREFIX}-step-out"]["StepScalingPolicyConfiguration"]
    assert out["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 4.0, "ScalingAdjustment": 1},
        {"MetricIntervalLowerBound": 4.0, "ScalingAdjustment": 3}]
    assert made[f"{PREFIX}-step-in"]["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": -2}]
    found = alarms(sandbox)
    high, low = found[f"{PREFIX}-backlog-high"], found[f"{PREFIX}-backlog-low"]
    assert (high["Threshold"], high["ComparisonOperator"], high["EvaluationPeriods"]) == \
        (1.0, "GreaterThanOrEqualToThreshold", 1)
    assert (low["Threshold"], low["ComparisonOperator"], low["EvaluationPeriods"]) == \
        (0.0, "LessThanOrEqualToThreshold", 3)
    assert high["TreatMissingData"] == low["TreatMissingData"] == "notBreaching"
    assert high["MetricName"] == "BacklogRuns" and high["Dimensions"] == [{"Name": "WorkPool", "Value": pool_name}]
    assert high["AlarmActions"] == [made[f"{PREFIX}-step-out"]["PolicyARN"]]
    assert low["AlarmActions"] == [made[f"{PREFIX}-step-in"]["PolicyARN"]]
    assert outcome.status["scaling"]["published"]["value"] == 2


async def test_target_tracking_minimum_is_one(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                              sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    outcome = await Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling={
        "mode": "TargetTracking", "minWorkers": 0, "maxWorkers": 3})).run()
    assert targets(sandbox, rid) == [(1, 3)]
    assert "cannot scale from zero" in next(c for c in outcome.status["conditions"] if c["type"] == "Scaling")["message"]


async def test_console_drift_is_corrected_once(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                               sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling={
        "mode": "StepScaling", "minWorkers": 1, "maxWorkers": 4}))
    await cycles.run()
    sandbox.autoscaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=rid, ScalableDimension=DIM,
                                                 MinCapacity=0, MaxCapacity=20)
    sandbox.cloudwatch.set_alarm_state  # noqa: B018 (exists; state edits are not drift)
    high = alarms(sandbox)[f"{PREFIX}-backlog-high"]
    sandbox.cloudwatch.put_metric_alarm(**{k: high[k] for k in (
        "AlarmName", "Namespace", "MetricName", "Dimensions", "Statistic", "Period", "EvaluationPeriods",
        "ComparisonOperator", "TreatMissingData", "AlarmActions")}, Threshold=10.0)
    events = []
    for _ in range(5):
        outcome = await cycles.run()
        events += outcome.events
    assert targets(sandbox, rid) == [(1, 4)]
    assert alarms(sandbox)[f"{PREFIX}-backlog-high"]["Threshold"] == 1.0
    drift = [e for e in events if e.reason == "AutoscalingDriftCorrected"]
    assert len(drift) == 2 and all(e.type == "Warning" for e in drift), events
    assert any("min/max 0/20 -> 1/4" in e.message for e in drift)
    before = moto.calls()
    await cycles.run()
    assert write_count(writes(moto, before)) == 0

    # StepScaling -> TargetTracking: the step policies and alarms go, the target stays ours.
    cycles.body["spec"]["scaling"]["mode"] = "TargetTracking"
    cycles.body["metadata"]["generation"] = 2
    switched = await cycles.run()
    assert list(policies(sandbox, rid)) == [f"{PREFIX}-target"] and alarms(sandbox) == {}
    assert targets(sandbox, rid) == [(1, 4)] and switched.status["scaling"]["autoscaling"]["ownedTarget"] is True
    assert sorted(managed_events(switched.events)) == ["AutoscalingCreated", "AutoscalingRemoved"]


async def test_a_foreign_target_is_a_conflict_unless_override(
        seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    sandbox.autoscaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=rid, ScalableDimension=DIM,
                                                 MinCapacity=0, MaxCapacity=9)
    scaling = {"mode": "TargetTracking", "minWorkers": 1, "maxWorkers": 3}
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling=scaling))
    before = moto.calls()
    held = await cycles.run()
    assert cond(held.status, "Scaling") == ("False", "Conflict")
    assert write_count(writes(moto, before)) == 0
    assert targets(sandbox, rid) == [(0, 9)] and policies(sandbox, rid) == {}

    cycles.body["spec"]["scaling"]["onConflict"] = "Override"
    cycles.body["metadata"]["generation"] = 2
    taken = await cycles.run()
    assert cond(taken.status, "Scaling")[0] == "True" and "Overriding" in \
        next(c for c in taken.status["conditions"] if c["type"] == "Scaling")["message"]
    assert targets(sandbox, rid) == [(1, 3)] and list(policies(sandbox, rid)) == [f"{PREFIX}-target"]
    assert taken.status["scaling"]["autoscaling"]["ownedTarget"] is False

    # Switching mode removes our policy and leaves the target we did not create.
    cycles.body["spec"]["scaling"] = {"mode": "CloudWatchMetric"}
    cycles.body["metadata"]["generation"] = 3
    switched = await cycles.run()
    assert policies(sandbox, rid) == {} and targets(sandbox, rid) == [(1, 3)]
    assert managed_events(switched.events) == ["AutoscalingRemoved"]
    assert "autoscaling" not in switched.status["scaling"]


async def test_mode_switch_and_deletion_remove_ours_only(
        seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    other_cluster, other_service, other_rid = world(sandbox)
    sandbox.autoscaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=other_rid, ScalableDimension=DIM,
                                                 MinCapacity=0, MaxCapacity=2)
    sandbox.cloudwatch.put_metric_alarm(AlarmName=f"user-{pool_name}", Namespace="X", MetricName="Y", Statistic="Sum",
                                        Period=60, EvaluationPeriods=1, Threshold=1,
                                        ComparisonOperator="GreaterThanThreshold")
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling={"mode": "StepScaling"}))
    await cycles.run()
    assert len(alarms(sandbox)) == 2 and len(policies(sandbox, rid)) == 2

    cycles.body["spec"]["scaling"] = {"mode": "DesiredCount", "minWorkers": 1, "maxWorkers": 2}
    cycles.body["metadata"]["generation"] = 2
    switched = await cycles.run()
    assert targets(sandbox, rid) == [] and policies(sandbox, rid) == {} and alarms(sandbox) == {}
    # DesiredCount owns desiredCount again at once (no Conflict with a target that is gone).
    assert cond(switched.status, "Scaling") == ("True", "BoundsEnforced")
    assert targets(sandbox, other_rid) == [(0, 2)]
    assert f"user-{pool_name}" in alarms(sandbox, "user-")

    # Back to TargetTracking, then the policy is deleted after an operator restart: the
    # status says what is ours, the deletion hook removes it.
    cycles.body["spec"]["scaling"] = {"mode": "TargetTracking"}
    cycles.body["metadata"]["generation"] = 3
    await cycles.run()
    assert targets(sandbox, rid) == [(1, 10)]
    fresh, other = AwsConnection(), AwsConnection()  # what the deletion handler has after an operator restart
    try:
        events = await release_on_delete(cycles.body, AutoscalingCache(), fresh, NoSecrets())
        again = await release_on_delete(cycles.body, AutoscalingCache(), other, NoSecrets())
    finally:
        fresh.close()
        other.close()
    assert again == []  # a retried deletion finds nothing of ours left
    assert [e[1] for e in events] == ["AutoscalingRemoved"]
    assert targets(sandbox, rid) == [] and policies(sandbox, rid) == {}
    assert targets(sandbox, other_rid) == [(0, 2)] and f"user-{pool_name}" in alarms(sandbox, "user-")


async def test_nothing_is_published_when_prefect_cannot_be_read(
        seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling={"mode": "TargetTracking"}))
    await cycles.run()
    cycles.body["spec"]["prefect"]["apiUrl"] = f"http://127.0.0.1:{free_port()}/api"
    cycles.body["metadata"]["generation"] = 2
    before = moto.calls()
    down = await cycles.run(utcnow() + dt.timedelta(minutes=1))
    made = writes(moto, before)
    assert not any(k.endswith("PutMetricData") for k in made) and write_count(made) == 0
    assert cond(down.status, "Scaling") == ("Unknown", "Holding")


async def test_a_spent_call_budget_stops_midway_and_the_next_cycles_finish(
        seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox) -> None:
    """The writes stop where AWS refused (here: the call budget); what went through is
    reported and remembered, so later cycles carry on from there without repeating it."""
    seeder.create_ecs_pool(pool_name)
    cluster, service, rid = world(sandbox)
    policy_body = body(seeder.api_url, pool_name, moto, cluster, service, scaling={"mode": "StepScaling"})
    policy_body["spec"]["ecs"]["maxCallsPerCycle"] = 5  # 3 reads + PutMetricData + RegisterScalableTarget
    cycles = Cycles(policy_body)
    first = await cycles.run()
    assert cond(first.status, "Scaling") == ("Unknown", "Holding")
    assert cond(first.status, "AwsConnected") == ("False", "CallBudgetExhausted")
    assert targets(sandbox, rid) == [(1, 10)] and policies(sandbox, rid) == {}
    assert managed_events(first.events) == ["AutoscalingCreated"]  # the target, told once
    events = []
    for _ in range(3):
        outcome = await cycles.run()
        events += managed_events(outcome.events)
        if cond(outcome.status, "Scaling")[1] == "AutoscalingReady":
            break
    assert cond(outcome.status, "Scaling") == ("True", "AutoscalingReady")
    assert sorted(policies(sandbox, rid)) == [f"{PREFIX}-step-in", f"{PREFIX}-step-out"] and len(alarms(sandbox)) == 2
    assert "AutoscalingDriftCorrected" not in events  # nothing was written twice
    assert outcome.status["scaling"]["autoscaling"]["ownedTarget"] is True
