"""Lookahead and per-queue backlog against a real Prefect server and moto (ECS, CloudWatch)."""

from __future__ import annotations

import datetime as dt

import pytest

from sandbox.moto_server import MotoServer
from sandbox.prefect_seed import PrefectSeeder, late_state, scheduled_state, utcnow
from tests.support.ecs_sandbox import EcsSandbox
from tests.integration.cycle.test_ecs_cycle import Cycles, aws_env, body, close_clients, cond, desired  # noqa: F401

pytestmark = pytest.mark.integration


def datapoints(sandbox: EcsSandbox, namespace: str, dimensions: dict[str, str]) -> list[float]:
    stats = sandbox.cloudwatch.get_metric_statistics(
        Namespace=namespace, MetricName="BacklogRuns",
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=utcnow() - dt.timedelta(minutes=5), EndTime=utcnow() + dt.timedelta(minutes=5),
        Period=60, Statistics=["Maximum"])
    return [p["Maximum"] for p in stats["Datapoints"]]


async def test_lookahead_counts_runs_due_soon(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                              sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=f"d-{pool_name}")
    seeder.create_runs(deployment, 3, scheduled_state(utcnow() + dt.timedelta(seconds=60)))  # within 2m
    seeder.create_runs(deployment, 2, scheduled_state(utcnow() + dt.timedelta(minutes=10)))  # beyond it
    seeder.create_runs(deployment, 1, late_state(120))
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    scaling = {"minWorkers": 0, "maxWorkers": 10, "backlogPerWorker": 1}
    without = await Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling=scaling)).run()
    assert without.status["scaling"]["backlog"] == 1 and "upcoming" not in without.status["scaling"]
    assert desired(sandbox, cluster, service) == 1

    ahead = await Cycles(body(seeder.api_url, pool_name, moto, cluster, service,
                              scaling={**scaling, "lookahead": "2m"})).run()
    assert ahead.status["scaling"]["backlog"] == 4
    assert ahead.status["scaling"]["upcoming"] == 3
    assert ahead.status["runs"]["late"] == 1  # the pool's figures keep their meaning
    assert desired(sandbox, cluster, service) == 4
    assert "3 due soon" in next(c for c in ahead.status["conditions"] if c["type"] == "Scaling")["message"]


async def test_lookahead_is_published_too(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                          sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name, name=f"d-{pool_name}")
    seeder.create_runs(deployment, 2, scheduled_state(utcnow() + dt.timedelta(seconds=90)))
    cluster = sandbox.cluster()
    outcome = await Cycles(body(seeder.api_url, pool_name, moto, cluster, None, scaling={
        "mode": "CloudWatchMetric", "metricNamespace": f"LA-{pool_name}", "lookahead": "2m",
        "perQueueMetrics": False})).run()
    assert cond(outcome.status, "Scaling") == ("True", "MetricPublished")
    assert datapoints(sandbox, f"LA-{pool_name}", {"WorkPool": pool_name}) == [2.0]


async def test_per_queue_series_carry_their_queue(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                  sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    for queue in ("high", "low", "idle"):
        seeder.create_queue(pool_name, queue)
    high = seeder.create_deployment(pool_name, name=f"h-{pool_name}", queue="high")
    low = seeder.create_deployment(pool_name, name=f"l-{pool_name}", queue="low")
    seeder.create_runs(high, 3, late_state(120))
    seeder.create_runs(low, 1, late_state(120))
    seeder.create_runs(low, 2, scheduled_state(utcnow() + dt.timedelta(minutes=30)))  # not due, no lookahead
    cluster = sandbox.cluster()
    namespace = f"PQ-{pool_name}"
    cycles = Cycles(body(seeder.api_url, pool_name, moto, cluster, None,
                         scaling={"mode": "CloudWatchMetric", "metricNamespace": namespace}))
    outcome = await cycles.run()
    assert outcome.status["scaling"]["queues"] == [{"name": "high", "backlog": 3}, {"name": "low", "backlog": 1}]
    assert outcome.status["scaling"]["published"]["series"] == 3
    assert datapoints(sandbox, namespace, {"WorkPool": pool_name}) == [4.0]
    assert datapoints(sandbox, namespace, {"WorkPool": pool_name, "WorkQueue": "high"}) == [3.0]
    assert datapoints(sandbox, namespace, {"WorkPool": pool_name, "WorkQueue": "low"}) == [1.0]
    assert datapoints(sandbox, namespace, {"WorkPool": pool_name, "WorkQueue": "idle"}) == []  # no runs, never seen

    listed = {tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))
              for m in sandbox.cloudwatch.list_metrics(Namespace=namespace)["Metrics"]}
    assert listed == {(("WorkPool", pool_name),), (("WorkPool", pool_name), ("WorkQueue", "high")),
                      (("WorkPool", pool_name), ("WorkQueue", "low"))}


async def test_scaling_follows_the_named_queues(seeder: PrefectSeeder, pool_name: str, moto: MotoServer,
                                                sandbox: EcsSandbox) -> None:
    seeder.create_ecs_pool(pool_name)
    for queue in ("high", "low"):
        seeder.create_queue(pool_name, queue)
    high = seeder.create_deployment(pool_name, name=f"h-{pool_name}", queue="high")
    low = seeder.create_deployment(pool_name, name=f"l-{pool_name}", queue="low")
    seeder.create_runs(high, 2, late_state(120))
    seeder.create_runs(low, 5, late_state(120))
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    outcome = await Cycles(body(seeder.api_url, pool_name, moto, cluster, service, scaling={
        "minWorkers": 0, "maxWorkers": 10, "backlogPerWorker": 1, "workQueues": ["high"]})).run()
    assert outcome.status["scaling"]["backlog"] == 2
    assert outcome.status["runs"]["late"] == 7
    assert desired(sandbox, cluster, service) == 2
