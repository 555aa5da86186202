"""The operator process reconciles policies on a real API server against a real Prefect server."""

from __future__ import annotations

import base64
import re

import pytest
import yaml

from sandbox.prefect_seed import PrefectSeeder, late_state
from tests.support.names import BASIC_AUTH, unique
from tests.support.kubectl import Kubectl, condition, wait_for

pytestmark = pytest.mark.e2e


def policy(name: str, api_url: str, pool: str, **extra: object) -> str:
    prefect: dict = {"apiUrl": api_url, "workPool": pool, **extra.pop("prefect", {})}  # type: ignore[dict-item]
    return yaml.safe_dump({
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
        "metadata": {"name": name}, "spec": {"prefect": prefect, "interval": "10s", **extra},
    })


def secret(name: str, key: str, value: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {key: base64.b64encode(value.encode()).decode()},
    })


def ready(ns: Kubectl, name: str, status: str, reason: str | None = None):
    def check():
        obj = ns.get_json("pwpp", name)
        cond = condition(obj, "Ready")
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return obj
        return None
    return check


def test_policy_reports_pool_figures(kubectl: Kubectl, namespace: str, operator_process, prefect_server) -> None:
    ns = kubectl.in_namespace(namespace)
    pool = unique("pool")
    with PrefectSeeder(prefect_server.api_url) as seeder:
        seeder.create_ecs_pool(pool)
        deployment = seeder.create_deployment(pool)
        seeder.create_runs(deployment, 3, {"type": "PENDING"})
        seeder.create_runs(deployment, 2, late_state(120))
        seeder.heartbeat_worker(pool, "worker-1")
    ns.apply(policy("etl", prefect_server.api_url, pool))

    obj = wait_for(ready(ns, "etl", "True", "Reconciled"), what="Ready=True")
    status = obj["status"]
    assert status["runs"] == {"late": 2, "pending": 3, "running": 0}
    assert status["workers"] == {"online": 1, "offline": 0}
    assert status["poolStatus"] == "READY" and status["prefectVersion"] == "3.8.8"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "PrefectConnected": "True", "WorkPoolReady": "True",
    }

    table = ns("get", "pwpp", "etl")
    assert table.split("\n")[0].split() == ["NAME", "POOL", "LATE", "PENDING", "WORKERS", "READY", "AGE"]
    assert table.split("\n")[1].split()[:6] == ["etl", pool, "2", "3", "1", "True"]
    described = ns("describe", "pwpp", "etl")
    for text in ("Reconciled", "PrefectConnected", "PoolReady", "Observed Generation"):
        assert text in described

    # Editing the spec is reconciled at once and bumps observedGeneration.
    ns("patch", "pwpp", "etl", "--type=merge", "-p", '{"spec":{"interval":"45s"}}')
    wait_for(lambda: ns.get_json("pwpp", "etl")["status"]["observedGeneration"] == 2, what="observedGeneration 2")


def test_missing_secret_then_recovery(kubectl: Kubectl, namespace: str, operator_process, prefect_auth_server) -> None:
    ns = kubectl.in_namespace(namespace)
    with PrefectSeeder(prefect_auth_server.api_url, auth=prefect_auth_server.auth) as seeder:
        seeder.create_ecs_pool("guarded-e2e")
    auth = {"basicAuthSecretRef": {"name": "prefect-auth", "key": "auth-string"}}
    ns.apply(policy("guarded", prefect_auth_server.api_url, "guarded-e2e", prefect={"auth": auth}))

    obj = wait_for(ready(ns, "guarded", "False", "SecretNotFound"), what="Ready=False SecretNotFound")
    assert f"Secret {namespace}/prefect-auth does not exist" in condition(obj, "Ready")["message"]
    assert condition(obj, "PrefectConnected")["status"] == "Unknown"
    wait_for(lambda: "SecretNotFound" in ns("get", "events", "--field-selector", "type=Warning"), what="Warning Event")
    # Events name the operator as their source (kubectl describe's "From" column), not kopf.
    warning = ns.get_json("events", "--field-selector", "type=Warning")["items"][0]
    assert (warning["source"]["component"], warning["reportingComponent"]) == ("prefect-workpool-operator",) * 2
    assert re.search(r"Warning\s+SecretNotFound\s+\S+\s+prefect-workpool-operator\s", ns("describe", "pwpp", "guarded"))

    ns.apply(secret("prefect-auth", "wrong-key", BASIC_AUTH))
    wait_for(ready(ns, "guarded", "False", "SecretKeyNotFound"), what="SecretKeyNotFound")

    ns.apply(secret("prefect-auth", "auth-string", "operator:wrong-password"))
    wait_for(ready(ns, "guarded", "False", "Unauthorized"), what="Unauthorized")

    ns.apply(secret("prefect-auth", "auth-string", BASIC_AUTH))
    obj = wait_for(ready(ns, "guarded", "True", "Reconciled"), timeout=90, what="recovery")
    assert condition(obj, "PrefectConnected")["reason"] == "Connected"

    # The secret never shows up in what users can read.
    dumped = ns("get", "pwpp", "guarded", "-o", "yaml") + ns("get", "events", "-o", "yaml")
    assert "s3cr3t-pass" not in dumped and "wrong-password" not in dumped

    # While Ready, the Secret is served from the operator's watch: a rotation is used by the
    # next cycle (not after a cache time), and a deletion is SecretNotFound.
    ns.apply(secret("prefect-auth", "auth-string", "operator:rotated-wrong"))
    wait_for(ready(ns, "guarded", "False", "Unauthorized"), timeout=45, what="rotated Secret used")
    ns("delete", "secret", "prefect-auth")
    wait_for(ready(ns, "guarded", "False", "SecretNotFound"), timeout=45, what="deleted Secret seen")


def test_unknown_pool_is_reported(kubectl: Kubectl, namespace: str, operator_process, prefect_server) -> None:
    ns = kubectl.in_namespace(namespace)
    ns.apply(policy("ghost", prefect_server.api_url, "no-such-pool"))
    obj = wait_for(ready(ns, "ghost", "False", "WorkPoolNotFound"), what="WorkPoolNotFound")
    assert condition(obj, "PrefectConnected")["status"] == "True"
    assert condition(obj, "WorkPoolReady")["reason"] == "WorkPoolNotFound"


def test_policy_recovers_stuck_runs(kubectl: Kubectl, namespace: str, operator_process, prefect_server) -> None:
    ns = kubectl.in_namespace(namespace)
    pool = unique("stuck")
    with PrefectSeeder(prefect_server.api_url) as seeder:
        seeder.create_ecs_pool(pool)
        deployment = seeder.create_deployment(pool)
        stuck = seeder.create_runs(deployment, 4, {"type": "PENDING"})
        ns.apply(policy("recovering", prefect_server.api_url, pool, staleRuns={"pendingTimeout": "30s"}))

        obj = wait_for(lambda: (o := ns.get_json("pwpp", "recovering")) and
                       (condition(o, "StaleRunsRecovered") or {}).get("reason") == "Recovered" and o,
                       timeout=120, what="StaleRunsRecovered=Recovered")
        assert {seeder.read_run(r)["state"]["name"] for r in stuck} == {"Requeued"}
    status = obj["status"]
    assert status["staleRuns"]["recovered"] == 4 and status["staleRuns"]["totalRecovered"] == 4
    assert sorted(status["lastRecovery"]["runIds"]) == sorted(stuck)
    described = ns("describe", "pwpp", "recovering")
    for text in ("StaleRunsRecovered", "Reschedule 4 of 4 stale run(s)", "Last Recovery", "RunsRecovered"):
        assert text in described, described


def test_scaling_and_recovery_on_ecs(kubectl: Kubectl, namespace: str, operator_process, prefect_server,
                                     moto, sandbox) -> None:
    """The operator scales the worker service from the backlog and leaves runs with live tasks alone."""
    import time

    import httpx

    from tests.support.kubectl import condition as cond_of

    ns = kubectl.in_namespace(namespace)
    pool = unique("ecs")
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    with PrefectSeeder(prefect_server.api_url) as seeder:
        seeder.create_ecs_pool(pool)
        deployment = seeder.create_deployment(pool)
        alive, orphan = seeder.create_runs(deployment, 2, {"type": "PENDING"})
        arn = sandbox.run(cluster, run_id=alive)[0]
        seeder._request("PATCH", f"/flow_runs/{alive}", json={"infrastructure_pid": f"{cluster}::{arn}"})
        ns.apply(policy(
            "ecs", prefect_server.api_url, pool,
            ecs={"region": "us-east-1", "cluster": cluster, "service": service, "endpointUrl": moto.endpoint_url},
            scaling={"minWorkers": 1, "maxWorkers": 4, "backlogPerWorker": 2},
            staleRuns={"pendingTimeout": "30s"},
        ))

        def desired() -> int:
            return sandbox.ecs.describe_services(cluster=cluster, services=[service])["services"][0]["desiredCount"]

        wait_for(lambda: desired() == 1, timeout=60, what="desiredCount = minWorkers")
        seeder.create_runs(deployment, 6, late_state(120))
        appeared = time.monotonic()
        wait_for(lambda: desired() == 3, timeout=60, interval=0.2, what="desiredCount 3 for 6 late runs")
        reaction = time.monotonic() - appeared
        print(f"\nbacklog appeared -> UpdateService: {reaction:.1f}s (interval 10s)")

        obj = wait_for(lambda: (o := ns.get_json("pwpp", "ecs")) and
                       (cond_of(o, "StaleRunsRecovered") or {}).get("reason") in ("Recovered", "CapExhausted") and o,
                       timeout=120, what="recovery")
        assert seeder.read_run(alive)["state"]["type"] == "PENDING"  # its ECS task is RUNNING
        assert seeder.read_run(orphan)["state"]["name"] == "Requeued"
    assert obj["status"]["staleRuns"]["skipped"]["infrastructureAlive"] == 1
    assert cond_of(obj, "AwsConnected")["status"] == "True"
    described = ns("describe", "pwpp", "ecs")
    for text in ("AwsConnected", "Scaling", "ScaledUp", "desiredCount 1 -> 3"):
        assert text in described, described
    assert re.search(r"Infrastructure Alive:\s+1\n", described), described
    wide = ns("get", "pwpp", "ecs", "-o", "wide").splitlines()
    columns = dict(zip(wide[0].split(), wide[1].split()))
    assert (columns["MODE"], columns["DESIRED"]) == ("DesiredCount", "3") and columns["RUNNING"].isdigit(), wide
    assert re.fullmatch(r"\d+[smh]", columns["RECOVERED"]), wide  # an age: when runs were last recovered
    metrics = httpx.get(operator_process.metrics_url).text
    assert f'pwo_worker_service_tasks{{count="desired",namespace="{namespace}",policy="ecs",pool="{pool}"}} 3.0' in metrics
    assert 'pwo_aws_requests_total{operation="DescribeServices"}' in metrics
