"""Whole cycles against a real Prefect server and moto (ECS, CloudWatch) in server mode."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest

from prefect_workpool_operator.core import infrastructure
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
from sandbox.processes import free_port
from sandbox.moto_server import MotoServer
from sandbox.prefect_seed import PrefectSeeder, default_ecs_base_job_template, late_state, utcnow
from tests.support.ecs_sandbox import REGION, EcsSandbox
from tests.support.recovery import NoSecrets, clock_after, states

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator uses the default credential chain here, as with IRSA in a cluster.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def body(api_url: str, pool: str, moto: MotoServer, cluster: str, service: str | None, **spec: Any) -> dict:
    ecs = {"region": REGION, "cluster": cluster, "endpointUrl": moto.endpoint_url, **({"service": service} if service else {})}
    return {"metadata": {"name": "ecs", "namespace": "ns", "generation": 1},
            "spec": {"prefect": {"apiUrl": api_url, "workPool": pool}, "ecs": ecs, **spec}, "status": {}}


class Cycles:
    """Runs cycles of one policy the way the timer does, carrying status and clients between them."""

    opened: list[httpx.AsyncClient] = []

    def __init__(self, body: dict) -> None:
        self.body = body
        self.runtime = PolicyRuntime()
        self.http = httpx.AsyncClient()
        Cycles.opened.append(self.http)

    async def run(self, now: dt.datetime | None = None):
        outcome = await run_cycle(self.body, http=self.http, secrets=NoSecrets(), runtime=self.runtime,
                                  now=now or utcnow())
        self.body["status"] = outcome.status
        return outcome


@pytest.fixture(autouse=True)
async def close_clients():
    yield
    while Cycles.opened:
        await Cycles.opened.pop().aclose()


def cond(status: dict, type_: str) -> tuple[str, str]:
    c = next(c for c in status["conditions"] if c["type"] == type_)
    return c["status"], c["reason"]


def desired(sandbox: EcsSandbox, cluster: str, service: str) -> int:
    return sandbox.ecs.describe_services(cluster=cluster, services=[service])["services"][0]["desiredCount"]


async def test_desired_count_follows_the_backlog(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                 sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    scaling = {"mode": "DesiredCount", "minWorkers": 1, "maxWorkers": 5, "backlogPerWorker": 2,
               "scaleDownStabilization": "5m", "scaleDownCooldown": "0s", "maxStepDown": 5}
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling=scaling))

    first = await cycles.run()  # nothing due: bring the service to minWorkers
    assert desired(sandbox, cluster, service) == 1
    assert cond(first.status, "AwsConnected") == ("True", "Connected")

    late = seeder.create_runs(deployment, 7, late_state(120))
    t0 = utcnow()
    outcome = await cycles.run(t0)  # one cycle after the backlog appears
    assert desired(sandbox, cluster, service) == 4  # ceil(7 / 2)
    assert cond(outcome.status, "Scaling") == ("True", "ScaledUp")
    assert outcome.status["scaling"]["lastChange"]["to"] == 4
    assert [e.reason for e in outcome.events] == ["ScaledUp"]

    for run in late:
        seeder.set_state(run, {"type": "RUNNING"})
    held = await cycles.run(t0 + dt.timedelta(minutes=2))  # backlog gone, window still holds 4
    assert desired(sandbox, cluster, service) == 4
    assert cond(held.status, "Scaling")[1] == "Stabilizing"
    await cycles.run(t0 + dt.timedelta(minutes=5, seconds=1))  # window passed
    assert desired(sandbox, cluster, service) == 1

    # Prefect unreachable: hold, never scale down on missing data.
    sandbox.ecs.update_service(cluster=cluster, service=service, desiredCount=3)
    cycles.body["spec"]["prefect"]["apiUrl"] = f"http://127.0.0.1:{free_port()}/api"
    cycles.body["metadata"]["generation"] = 2
    down = await cycles.run(t0 + dt.timedelta(minutes=20))
    assert desired(sandbox, cluster, service) == 3
    assert cond(down.status, "Scaling") == ("Unknown", "Holding")
    assert cond(down.status, "Ready") == ("False", "Unreachable")


async def test_steady_state_makes_one_aws_call(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                               sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    sandbox.ecs.update_service(cluster=cluster, service=service, desiredCount=1)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service,
                         scaling={"minWorkers": 1, "maxWorkers": 3}, staleRuns={"pendingTimeout": "10m"}))
    await cycles.run()  # first cycle also checks for an autoscaling target
    before = moto.calls()
    outcome = await cycles.run()
    after = moto.calls()
    made = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    print(f"\nsteady cycle AWS calls: {made}")
    assert sum(made.values()) == 1 and list(made) == ["AmazonEC2ContainerServiceV20141113.DescribeServices"]
    assert cond(outcome.status, "Scaling")[0] == "True"


async def test_autoscaling_target_is_a_conflict(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    sandbox.autoscaling.register_scalable_target(
        ServiceNamespace="ecs", ResourceId=f"service/{cluster}/{service}",
        ScalableDimension="ecs:service:DesiredCount", MinCapacity=0, MaxCapacity=4)
    outcome = await Cycles(body(seeder.api_url, pool_name, moto, cluster, service,
                                scaling={"minWorkers": 2, "maxWorkers": 3})).run()
    assert cond(outcome.status, "Scaling") == ("False", "Conflict")
    assert desired(sandbox, cluster, service) == 0  # left alone


async def test_cloudwatch_mode_publishes_the_backlog(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                     sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.create_runs(deployment, 3, late_state(120))
    cluster = sandbox.cluster()
    outcome = await Cycles(body(seeder.api_url, pool_name, moto, cluster, None,
                                scaling={"mode": "CloudWatchMetric", "metricNamespace": "PrefectTest"})).run()
    assert cond(outcome.status, "Scaling") == ("True", "MetricPublished")
    stats = sandbox.cloudwatch.get_metric_statistics(
        Namespace="PrefectTest", MetricName="BacklogRuns", Dimensions=[{"Name": "WorkPool", "Value": pool_name}],
        StartTime=utcnow() - dt.timedelta(minutes=5), EndTime=utcnow() + dt.timedelta(minutes=5),
        Period=60, Statistics=["Maximum"])
    assert max(p["Maximum"] for p in stats["Datapoints"]) == 3


async def test_runs_with_live_tasks_are_not_recovered(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                      sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    cluster = sandbox.cluster()
    runs = seeder.create_runs(deployment, 6, {"type": "PENDING"})
    alive, stopped, tagged_alive, tagged_stopped = runs[:2], runs[2:4], runs[4], runs[5]
    for run in alive + stopped:  # pid written by the worker after RunTask
        arn = sandbox.run(cluster, run_id=run)[0]
        seeder._request("PATCH", f"/flow_runs/{run}", json={"infrastructure_pid": f"{cluster}::{arn}"})
        if run in stopped:
            sandbox.stop(cluster, arn)
    sandbox.run(cluster, run_id=tagged_alive)  # worker died right after RunTask: only the tag says so
    sandbox.stop(cluster, sandbox.run(cluster, run_id=tagged_stopped)[0])

    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, None, staleRuns={"pendingTimeout": "30s"}))
    now = clock_after(seeder, runs)
    first = await cycles.run(now)
    assert first.status["staleRuns"]["recovered"] == 0  # one observation never acts
    outcome = await cycles.run(now + dt.timedelta(seconds=30))  # one interval later
    got = states(seeder, runs)
    assert {got[r] for r in alive + [tagged_alive]} == {("PENDING", "Pending")}
    assert {got[r] for r in stopped + [tagged_stopped]} == {("SCHEDULED", "Requeued")}
    # The proof is in the run's state message: the stopped task and why ECS stopped it.
    assert "stoppedReason 'test'" in seeder.read_run(stopped[0])["state"]["message"]
    assert "no ECS task exists" in seeder.read_run(tagged_stopped)["state"]["message"]
    assert outcome.status["staleRuns"]["skipped"]["infrastructureAlive"] == 3


async def test_300_stale_runs_with_pids_cost_three_describe_tasks(
    seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox
) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    cluster = sandbox.cluster()
    runs = seeder.create_runs_bulk(deployment, 300, {"type": "PENDING"})
    arns = sandbox.run(cluster, count=300)
    for run, arn in zip(runs, arns):
        seeder._request("PATCH", f"/flow_runs/{run}", json={"infrastructure_pid": f"{cluster}::{arn}"})
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, None,
                         staleRuns={"pendingTimeout": "30s", "maxRunsPerCycle": 300}))
    before = moto.calls()
    outcome = await cycles.run(clock_after(seeder, runs))
    after = moto.calls()
    made = {k.split(".")[-1]: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    print(f"\n300 stale runs with pids: AWS calls {made}")
    assert made == {"DescribeTasks": 3}
    assert outcome.status["staleRuns"]["skipped"]["infrastructureAlive"] == 300


async def test_job_template_drift_is_repaired_and_reported(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                           sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, sandbox.cluster(), None,
                         jobTemplate={"variables": {"task_start_timeout_seconds": 900,
                                                    "match_latest_revision_in_family": True}},
                         staleRuns={"pendingTimeout": "10m"}))
    outcome = await cycles.run()
    assert cond(outcome.status, "JobTemplateSynced") == ("True", "Repaired")
    assert [e.reason for e in outcome.events if e.reason == "JobTemplateRepaired"]
    props = seeder.read_pool(pool_name)["base_job_template"]["variables"]["properties"]
    assert props["task_start_timeout_seconds"]["default"] == 900
    assert props["match_latest_revision_in_family"]["default"] is True
    # 10m is shorter than the 900 s ECS start timeout now declared.
    assert cond(outcome.status, "ConfigConsistent") == ("False", "PendingTimeoutBelowTaskStartTimeout")
    again = await cycles.run()
    assert cond(again.status, "JobTemplateSynced") == ("True", "InSync")


async def test_variable_missing_from_a_newer_template_is_reported(
    seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox
) -> None:
    # prefect-aws >= 0.6 templates no longer have the ECS timeout variables.
    template = default_ecs_base_job_template()
    for name in ("task_start_timeout_seconds", "task_watch_poll_interval"):
        template["variables"]["properties"].pop(name, None)
        template["job_configuration"].pop(name, None)
    seeder.create_ecs_pool(pool_name, template)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, sandbox.cluster(), None,
                         jobTemplate={"variables": {"task_start_timeout_seconds": 600,
                                                    "match_latest_revision_in_family": True}}))
    outcome = await cycles.run()
    assert cond(outcome.status, "JobTemplateSynced") == ("False", "VariableNotInTemplate")
    message = next(c["message"] for c in outcome.status["conditions"] if c["type"] == "JobTemplateSynced")
    assert "task_start_timeout_seconds" in message
    # A partly impossible declaration changes nothing: the template is left as it was.
    props = seeder.read_pool(pool_name)["base_job_template"]["variables"]["properties"]
    assert props["match_latest_revision_in_family"]["default"] is False


async def test_throttled_ecs_is_retried(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                        sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling={"minWorkers": 1, "maxWorkers": 2}))
    moto.throttle("DescribeServices", 2)
    outcome = await cycles.run()
    assert cond(outcome.status, "AwsConnected") == ("True", "Connected")
    assert cond(outcome.status, "Ready") == ("True", "Reconciled")
    assert desired(sandbox, cluster, service) == 1


class DictSecrets:
    """Secret data as the API server would hand it over (the Kubernetes reader is tested in e2e)."""

    def __init__(self, data: dict[tuple[str, str], str]) -> None:
        self.data = data

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        from prefect_workpool_operator.kube.api import SecretError

        try:
            return self.data[(name, key)]
        except KeyError:
            raise SecretError("SecretKeyNotFound", f"Secret {namespace}/{name} has no key {key!r}") from None


async def test_static_credentials_from_a_secret(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                sandbox: EcsSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    seeder.create_ecs_pool(pool_name)
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    policy = body(seeder.api_url, pool_name, moto, cluster, service, scaling={"minWorkers": 1, "maxWorkers": 2})
    policy["spec"]["ecs"]["credentialsSecretRef"] = {"name": "aws"}
    secrets = DictSecrets({("aws", "aws-access-key-id"): "AKIAEXAMPLEKEY000000",
                           ("aws", "aws-secret-access-key"): "s3cr3t-aws-value"})
    async with httpx.AsyncClient() as http:
        ok = await run_cycle(policy, http=http, secrets=secrets, runtime=PolicyRuntime(), now=utcnow())
        assert cond(ok.status, "AwsConnected") == ("True", "Connected")
        assert desired(sandbox, cluster, service) == 1

        policy["spec"]["ecs"]["credentialsSecretRef"]["secretAccessKeyKey"] = "wrong-key"
        bad = await run_cycle(policy, http=http, secrets=secrets, runtime=PolicyRuntime(), now=utcnow())
    assert cond(bad.status, "Ready") == ("False", "SecretKeyNotFound")
    assert cond(bad.status, "AwsConnected") == ("False", "SecretKeyNotFound")
    assert "s3cr3t" not in str(bad.status) and "AKIAEXAMPLE" not in str(bad.status)


def stale_condition(status: dict) -> tuple[str, str, str]:
    c = next(c for c in status["conditions"] if c["type"] == "StaleRunsRecovered")
    return c["status"], c["reason"], c["message"]


async def test_throttled_describe_tasks_holds_then_acts_one_interval_after(
    seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox
) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    cluster = sandbox.cluster()
    (run,) = seeder.create_runs(deployment, 1, {"type": "PENDING"})
    arn = sandbox.run(cluster, run_id=run)[0]
    seeder._request("PATCH", f"/flow_runs/{run}", json={"infrastructure_pid": f"{cluster}::{arn}"})
    sandbox.stop(cluster, arn)
    interval = dt.timedelta(seconds=30)
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, None, staleRuns={"pendingTimeout": "30s"}))
    t0 = clock_after(seeder, [run])

    first = await cycles.run(t0)  # the stopped task, seen once
    assert stale_condition(first.status)[1] == "AwaitingConfirmation"
    moto.throttle("DescribeTasks", 10**6, match=cluster)
    try:
        for k in (1, 2):
            held = await cycles.run(t0 + k * interval)
            status, reason, message = stale_condition(held.status)
            assert (status, reason) == ("Unknown", "InfrastructureUnknown") and "Throttled" in message
            assert held.status["staleRuns"]["recovered"] == 0
    finally:
        moto.throttle("DescribeTasks", 0, match=cluster)
    lifted = await cycles.run(t0 + 3 * interval)  # the first answer after the throttle: acts at once
    assert lifted.status["staleRuns"]["recovered"] == 1
    assert states(seeder, [run])[run] == ("SCHEDULED", "Requeued")


async def test_a_one_off_task_gone_reading_never_acts(
    seeder: PrefectSeeder, pool_name: str, moto: MotoServer, sandbox: EcsSandbox
) -> None:
    # The task's run-id tag vanishes from every other answer (what moto can do under
    # concurrent DescribeTasks): the run never reads gone twice in a row.
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    cluster = sandbox.cluster()
    (run,) = seeder.create_runs(deployment, 1, {"type": "PENDING"})  # no claim: claimer unknown
    arn = sandbox.run(cluster, run_id=run)[0]
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, None, staleRuns={"pendingTimeout": "30s"}))
    t0 = clock_after(seeder, [run])
    reasons = []
    for k in range(6):
        if k % 2 == 0:
            sandbox.ecs.untag_resource(resourceArn=arn, tagKeys=[infrastructure.RUN_ID_TAG])
        else:
            sandbox.ecs.tag_resource(resourceArn=arn, tags=[{"key": infrastructure.RUN_ID_TAG, "value": run}])
        outcome = await cycles.run(t0 + k * dt.timedelta(seconds=30))
        reasons.append(stale_condition(outcome.status)[1])
        assert outcome.status["staleRuns"]["recovered"] == 0
    assert reasons == ["AwaitingConfirmation", "InfrastructureAlive"] * 3
    assert states(seeder, [run])[run] == ("PENDING", "Pending")
