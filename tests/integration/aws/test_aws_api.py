"""AwsClient against moto in server mode: real HTTP, real boto3 clients, injected throttling.

What moto 5.2 does and does not model (checked against its source and this server):
- RunTask with launchType FARGATE needs an awsvpc network configuration whose subnet
  is in a VPC with DNS hostnames on (else moto fails with HTTP 500). The ``tags``
  parameter is stored and DescribeTasks ``include=["TAGS"]`` returns it; RunTask's
  ``propagateTags`` is accepted and ignored.
- Tasks start RUNNING (never PROVISIONING/PENDING). moto would move them one step
  towards STOPPED per DescribeTasks; our launcher holds them until StopTask.
- DescribeTasks never reports ``failures``: unknown ARNs are just absent. It also
  finds tasks of other clusters than the one asked.
- ListTasks ignores ``maxResults``/``nextToken``: everything comes in one page, so
  the page bound is not exercised here.
- A service created with desiredCount > 0 keeps a deployment whose rolloutState is
  IN_PROGRESS forever; created with 0 it is COMPLETED. UpdateService sets
  runningCount = desiredCount at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from prefect_workpool_operator import aws
from prefect_workpool_operator.core import infrastructure
from prefect_workpool_operator.aws import AwsClient, AwsCredentials, AwsError, EcsInfrastructureCheck
from prefect_workpool_operator.core.stale import InfraReading, Infrastructure, PendingRun
from sandbox.processes import free_port
from sandbox.moto_server import MotoServer
from tests.support.ecs_sandbox import REGION, EcsSandbox

pytestmark = pytest.mark.integration

CREDENTIALS = AwsCredentials("testing", "testing")
ALIVE, GONE, UNKNOWN = Infrastructure.ALIVE, Infrastructure.GONE, Infrastructure.UNKNOWN
NONE_FOUND = Infrastructure.NONE_FOUND


def kinds(readings: dict[str, InfraReading]) -> dict[str, Infrastructure]:
    return {k: v.state for k, v in readings.items()}


@pytest.fixture
def make_client(moto: MotoServer) -> Iterator[Callable[..., AwsClient]]:
    made: list[AwsClient] = []

    def make(**kwargs: Any) -> AwsClient:
        kwargs.setdefault("endpoint_url", moto.endpoint_url)
        kwargs.setdefault("credentials", CREDENTIALS)
        client = AwsClient(kwargs.pop("region", REGION), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class CallCounter:
    """Requests moto received per operation between ``mark()`` and ``since()``."""

    def __init__(self, moto: MotoServer) -> None:
        self.moto = moto
        self.before: dict[str, int] = {}

    def mark(self) -> None:
        self.before = self.moto.calls()

    def since(self, operation: str) -> int:
        now = self.moto.calls()
        return sum(n - self.before.get(k, 0) for k, n in now.items() if k.endswith("." + operation))


@pytest.fixture
def counter(moto: MotoServer) -> Iterator[CallCounter]:
    yield CallCounter(moto)
    moto.throttle("DescribeTasks", 0)
    moto.throttle("DescribeServices", 0)


def pid(cluster: str, task_arn: str) -> str:
    return f"{cluster}::{task_arn}"


def missing_arn(cluster: str) -> str:
    return f"arn:aws:ecs:{REGION}:123456789012:task/{cluster}/{uuid.uuid4().hex}"


# -- task liveness by pid -------------------------------------------------------------


async def test_task_states_follow_the_tasks(sandbox: EcsSandbox, make_client, counter: CallCounter) -> None:
    cluster = sandbox.cluster()
    stopped, running, other = sandbox.run(cluster, 3)
    sandbox.stop(cluster, stopped)
    by_arn = pid(sandbox.cluster_arn(cluster), other)  # prefect-aws writes the cluster ARN when none is configured
    elsewhere = pid(cluster, f"arn:aws:ecs:eu-west-1:123456789012:task/{cluster}/{uuid.uuid4().hex}")
    missing = pid(cluster, missing_arn(cluster))
    client = make_client()

    counter.mark()
    readings = await client.task_states([
        pid(cluster, stopped), pid(cluster, running), by_arn, missing, "not-an-ecs-pid", elsewhere,
    ])

    # The proof of a gone task: what ECS says stopped it, or that it no longer knows it.
    assert "STOPPED" in readings[pid(cluster, stopped)].detail
    assert "stoppedReason 'test'" in readings[pid(cluster, stopped)].detail
    assert readings[missing].detail == "task unknown to ECS"
    assert kinds(readings) == {
        pid(cluster, stopped): GONE,
        pid(cluster, running): ALIVE,
        by_arn: ALIVE,
        missing: GONE,  # ECS says MISSING (moto: absent from the answer)
        "not-an-ecs-pid": UNKNOWN,  # not ours to judge
        elsewhere: UNKNOWN,  # another region: MISSING here would prove nothing
    }
    # The cluster's two spellings (name and ARN) are two groups: two calls.
    assert counter.since("DescribeTasks") == 2 == client.calls["DescribeTasks"]
    assert client.last_error is None


async def test_300_pids_take_three_describe_tasks_calls(sandbox: EcsSandbox, make_client, counter: CallCounter) -> None:
    cluster = sandbox.cluster()
    arns = sandbox.run(cluster, 300)
    for arn in arns[:30]:
        sandbox.stop(cluster, arn)
    client = make_client()

    counter.mark()
    started = time.monotonic()
    states = kinds(await client.task_states([pid(cluster, a) for a in arns]))
    elapsed = time.monotonic() - started

    assert [states[pid(cluster, a)] for a in arns] == [GONE] * 30 + [ALIVE] * 270
    assert counter.since("DescribeTasks") == 3
    assert client.calls == {"DescribeTasks": 3} and client.budget.used == 3
    assert elapsed < 10


async def test_stopping_tasks_stay_alive_until_stopped(
    moto: MotoServer, sandbox: EcsSandbox, make_client
) -> None:
    cluster = sandbox.cluster()
    (task,) = sandbox.run(cluster, 1)
    client = make_client()
    moto.set_transition("ecs::task", {"progression": "manual", "times": 1})  # one step per DescribeTasks
    try:
        seen = []
        for _ in range(4):
            answer = sandbox.ecs.describe_tasks(cluster=cluster, tasks=[task])["tasks"][0]["lastStatus"]
            seen.append((answer, infrastructure.task_liveness(answer)))
    finally:
        moto.hold_tasks()
    assert seen == [("DEACTIVATING", ALIVE), ("STOPPING", ALIVE), ("DEPROVISIONING", ALIVE), ("STOPPED", GONE)]
    assert kinds(await client.task_states([pid(cluster, task)])) == {pid(cluster, task): GONE}


# -- runs without a pid: the run-id tag -----------------------------------------------


async def test_tasks_for_runs_finds_live_tasks_by_their_run_tag(
    sandbox: EcsSandbox, make_client, counter: CallCounter
) -> None:
    cluster = sandbox.cluster()
    alive_run, stopped_run, no_task_run, other_run = (str(uuid.uuid4()) for _ in range(4))
    sandbox.run(cluster, 1, alive_run)
    (stopped,) = sandbox.run(cluster, 1, stopped_run)
    sandbox.stop(cluster, stopped)
    sandbox.run(cluster, 1, other_run)
    sandbox.run(cluster, 2)  # untagged tasks: somebody else's
    client = make_client()

    counter.mark()
    found = kinds(await client.tasks_for_runs(cluster, {alive_run, stopped_run, no_task_run}))

    # The scan sees running tasks only: a stopped tagged task is no task found, not a proof.
    assert found == {alive_run: ALIVE, stopped_run: NONE_FOUND, no_task_run: NONE_FOUND}
    assert (counter.since("ListTasks"), counter.since("DescribeTasks")) == (1, 1)
    assert client.last_error is None


async def test_tasks_for_runs_describes_running_tasks_100_at_a_time(
    sandbox: EcsSandbox, make_client, counter: CallCounter
) -> None:
    cluster = sandbox.cluster()
    sandbox.run(cluster, 250)
    run_id = str(uuid.uuid4())
    sandbox.run(cluster, 1, run_id)
    client = make_client()

    counter.mark()
    assert kinds(await client.tasks_for_runs(cluster, {run_id})) == {run_id: ALIVE}
    assert (counter.since("ListTasks"), counter.since("DescribeTasks")) == (1, 3)


async def test_infrastructure_check_combines_pids_and_tags(sandbox: EcsSandbox, make_client) -> None:
    cluster = sandbox.cluster()
    now = dt.datetime.now(dt.UTC)
    ids = {name: str(uuid.uuid4()) for name in ("pid_alive", "pid_stopped", "tag_alive", "nothing", "odd_pid")}
    (alive,) = sandbox.run(cluster, 1, ids["pid_alive"])
    (stopped,) = sandbox.run(cluster, 1, ids["pid_stopped"])
    sandbox.stop(cluster, stopped)
    sandbox.run(cluster, 1, ids["tag_alive"])
    sandbox.run(cluster, 1, ids["odd_pid"])
    runs = [
        PendingRun(ids["pid_alive"], now, infrastructure_pid=pid(cluster, alive)),
        PendingRun(ids["pid_stopped"], now, infrastructure_pid=pid(cluster, stopped)),
        PendingRun(ids["tag_alive"], now),
        PendingRun(ids["nothing"], now),
        PendingRun(ids["odd_pid"], now, infrastructure_pid="no-separator"),  # falls back to the tag
    ]
    client = make_client()

    answers = kinds(await EcsInfrastructureCheck(client, cluster).check(runs))
    assert answers == {
        ids["pid_alive"]: ALIVE, ids["pid_stopped"]: GONE, ids["tag_alive"]: ALIVE, ids["nothing"]: NONE_FOUND,
        ids["odd_pid"]: ALIVE,
    }
    assert dict(client.calls) == {"DescribeTasks": 2, "ListTasks": 1}

    # Without a cluster to scan, pid-less runs are not checked at all (recovery treats them as NOT_CHECKED).
    answers = kinds(await EcsInfrastructureCheck(client, None).check(runs))
    assert answers == {ids["pid_alive"]: ALIVE, ids["pid_stopped"]: GONE}


# -- the worker service ---------------------------------------------------------------


async def test_describe_service_and_set_desired_count(sandbox: EcsSandbox, make_client, counter: CallCounter) -> None:
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    client = make_client()

    counter.mark()
    state = await client.describe_service(cluster, service)
    assert counter.since("DescribeServices") == 1  # steady state: one call per cycle
    assert (state.status, state.desired, state.running, state.pending) == ("ACTIVE", 0, 0, 0)
    assert not state.deployment_in_progress

    counter.mark()
    updated = await client.set_desired_count(cluster, service, 3)
    assert counter.since("UpdateService") == 1 and counter.since("DescribeServices") == 0
    assert (updated.desired, updated.running) == (3, 3)
    assert (await client.describe_service(cluster, service)).desired == 3


async def test_a_scalable_target_is_detected(sandbox: EcsSandbox, make_client, counter: CallCounter) -> None:
    cluster = sandbox.cluster()
    owned, free = sandbox.service(cluster, "owned"), sandbox.service(cluster, "free")
    sandbox.autoscaling.register_scalable_target(
        ServiceNamespace="ecs", ResourceId=f"service/{cluster}/{owned}",
        ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=5,
    )
    client = make_client()

    counter.mark()
    assert await client.scalable_target(cluster, owned) is True
    assert await client.scalable_target(sandbox.cluster_arn(cluster), owned) is True  # ARNs become names
    assert await client.scalable_target(cluster, free) is False
    assert counter.since("DescribeScalableTargets") == 3


async def test_the_backlog_metric_is_published(sandbox: EcsSandbox, make_client) -> None:
    namespace = f"PrefectOps/{uuid.uuid4().hex[:6]}"
    client = make_client()

    await client.put_backlog_metric(namespace, "Backlog", {"WorkPool": "etl"}, 7)

    metrics = sandbox.cloudwatch.list_metrics(Namespace=namespace)["Metrics"]
    assert metrics == [{"Namespace": namespace, "MetricName": "Backlog",
                        "Dimensions": [{"Name": "WorkPool", "Value": "etl"}]}]
    now = dt.datetime.now(dt.UTC)
    stats = sandbox.cloudwatch.get_metric_statistics(
        Namespace=namespace, MetricName="Backlog", Dimensions=[{"Name": "WorkPool", "Value": "etl"}],
        StartTime=now - dt.timedelta(minutes=5), EndTime=now + dt.timedelta(minutes=1), Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert [d["Maximum"] for d in stats] == [7.0]
    assert client.calls == {"PutMetricData": 1}


# -- throttling, budget, failures -----------------------------------------------------


async def test_throttled_describe_tasks_is_retried(
    moto: MotoServer, sandbox: EcsSandbox, make_client, counter: CallCounter
) -> None:
    cluster = sandbox.cluster()
    arns = sandbox.run(cluster, 2)
    client = make_client(max_attempts=5)

    counter.mark()
    moto.throttle("DescribeTasks", 3)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    beat = asyncio.create_task(ticker())
    states = kinds(await client.task_states([pid(cluster, a) for a in arns]))
    beat.cancel()

    assert set(states.values()) == {ALIVE}
    # botocore sleeps between retries (seconds here) in a worker thread; the event loop kept going.
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.5
    assert client.last_error is None
    assert counter.since("DescribeTasks") == 4 == client.calls["DescribeTasks"] == client.budget.used


async def test_throttling_beyond_the_retries_is_reported_as_throttled(
    moto: MotoServer, sandbox: EcsSandbox, make_client, counter: CallCounter
) -> None:
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    arns = sandbox.run(cluster, 150)  # two batches: after a Throttled answer the second is not even sent
    client = make_client(max_attempts=2)

    counter.mark()
    moto.throttle("DescribeTasks", 10)
    states = kinds(await client.task_states([pid(cluster, a) for a in arns]))
    assert set(states.values()) == {UNKNOWN}
    assert client.last_error is not None and client.last_error.reason == aws.THROTTLED
    assert "DescribeTasks was throttled" in client.last_error.message
    assert counter.since("DescribeTasks") == 2

    # The recovery's check: after the throttled DescribeTasks it does not scan for pid-less runs.
    client.start_cycle()
    now = dt.datetime.now(dt.UTC)
    runs = [PendingRun("with-pid", now, infrastructure_pid=pid(cluster, arns[0])), PendingRun("no-pid", now)]
    counter.mark()
    moto.throttle("DescribeTasks", 10)
    assert kinds(await EcsInfrastructureCheck(client, cluster).check(runs)) == {"with-pid": UNKNOWN, "no-pid": UNKNOWN}
    assert (counter.since("DescribeTasks"), counter.since("ListTasks")) == (2, 0)

    moto.throttle("DescribeServices", 10)
    with pytest.raises(AwsError) as err:
        await client.describe_service(cluster, service)
    assert err.value.reason == aws.THROTTLED and err.value.operation == "DescribeServices"


async def test_not_found_reasons(sandbox: EcsSandbox, make_client) -> None:
    cluster = sandbox.cluster()
    client = make_client()

    with pytest.raises(AwsError) as err:
        await client.describe_service("no-such-cluster", "prefect-worker")
    assert err.value.reason == aws.CLUSTER_NOT_FOUND
    assert err.value.message == f"ECS cluster 'no-such-cluster' does not exist in {REGION}"

    with pytest.raises(AwsError) as err:
        await client.describe_service(cluster, "no-such-service")
    assert err.value.reason == aws.SERVICE_NOT_FOUND and "'no-such-service'" in err.value.message

    with pytest.raises(AwsError) as err:
        await client.set_desired_count(cluster, "no-such-service", 2)
    assert err.value.reason == aws.SERVICE_NOT_FOUND

    client.start_cycle()
    states = kinds(await client.task_states([pid("no-such-cluster", missing_arn("no-such-cluster"))]))
    assert set(states.values()) == {UNKNOWN}  # maybe the wrong region or account: hands off
    assert client.last_error is not None and client.last_error.reason == aws.CLUSTER_NOT_FOUND

    assert set(kinds(await client.tasks_for_runs("no-such-cluster", {"r1"})).values()) == {UNKNOWN}


async def test_a_spent_budget_answers_unknown_without_calling(
    sandbox: EcsSandbox, make_client, counter: CallCounter
) -> None:
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    arns = sandbox.run(cluster, 300)
    client = make_client(calls_per_cycle=2)

    counter.mark()
    states = kinds(await client.task_states([pid(cluster, a) for a in arns]))
    assert [states[pid(cluster, a)] for a in arns] == [ALIVE] * 200 + [UNKNOWN] * 100
    assert counter.since("DescribeTasks") == 2
    assert client.budget.exhausted and client.budget.refused == 1

    counter.mark()
    assert kinds(await client.tasks_for_runs(cluster, {"r1", "r2"})) == {"r1": UNKNOWN, "r2": UNKNOWN}
    with pytest.raises(AwsError) as err:
        await client.describe_service(cluster, service)
    assert err.value.reason == aws.CALL_BUDGET_EXHAUSTED
    assert counter.since("ListTasks") == counter.since("DescribeTasks") == counter.since("DescribeServices") == 0
    assert client.last_error is None  # our own limit, not an AWS failure

    client.start_cycle()
    assert (await client.describe_service(cluster, service)).status == "ACTIVE"


async def test_unreachable_and_invalid_configuration_never_show_credentials(make_client) -> None:
    secret = AwsCredentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "session-token-xyz")

    closed = make_client(endpoint_url=f"http://user:pw@127.0.0.1:{free_port()}", credentials=secret,
                         max_attempts=2, connect_timeout=1)
    with pytest.raises(AwsError) as err:
        await closed.describe_service("c", "s")
    assert err.value.reason == aws.UNREACHABLE
    assert "127.0.0.1" in err.value.message

    bad_region = make_client(region="not a region!", credentials=secret)
    with pytest.raises(AwsError) as region_err:
        await bad_region.describe_service("c", "s")
    assert region_err.value.reason == aws.INVALID_CONFIGURATION

    bad_endpoint = make_client(endpoint_url="not a url", credentials=secret)
    with pytest.raises(AwsError) as endpoint_err:
        await bad_endpoint.describe_service("c", "s")
    assert endpoint_err.value.reason == aws.INVALID_CONFIGURATION

    for shown in (str(err.value), str(region_err.value), str(endpoint_err.value), repr(closed), repr(secret)):
        for value in ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "session-token-xyz", "pw@"):
            assert value not in shown


async def test_the_default_credential_chain_is_used_without_a_secret(
    sandbox: EcsSandbox, make_client, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    client = make_client(credentials=None)
    assert (await client.describe_service(cluster, service)).status == "ACTIVE"


@pytest.fixture(scope="module")
def iam_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, AwsCredentials]]:
    """A second moto that checks credentials and IAM policies after its first two requests,
    which create a user without any permission."""
    with MotoServer(tmp_path_factory.mktemp("moto-iam"), env={"INITIAL_NO_AUTH_ACTION_COUNT": "2"}) as server:
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name=REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="no-permissions")
        key = iam.create_access_key(UserName="no-permissions")["AccessKey"]
        yield server, AwsCredentials(key["AccessKeyId"], key["SecretAccessKey"])


async def test_refused_credentials_give_access_denied(iam_moto, make_client) -> None:
    server, user = iam_moto

    no_permission = make_client(endpoint_url=server.endpoint_url, credentials=user)
    with pytest.raises(AwsError) as err:
        await no_permission.describe_service("c", "s")
    assert err.value.reason == aws.ACCESS_DENIED
    assert user.access_key_id not in err.value.message and user.secret_access_key not in err.value.message

    unknown_key = make_client(endpoint_url=server.endpoint_url, credentials=AwsCredentials("AKIAUNKNOWNKEY000000", "x"))
    with pytest.raises(AwsError) as err:
        await unknown_key.describe_service("c", "s")
    assert err.value.reason == aws.ACCESS_DENIED
    assert "AKIAUNKNOWNKEY000000" not in err.value.message

    # An infrastructure check with refused credentials answers UNKNOWN and records why.
    states = kinds(await no_permission.task_states([pid("c", missing_arn("c"))]))
    assert set(states.values()) == {UNKNOWN}
    assert no_permission.last_error is not None and no_permission.last_error.reason == aws.ACCESS_DENIED
