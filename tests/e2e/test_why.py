"""`kubectl pwpp why` on real servers: the policy from a real API server, the run from a real
Prefect server, its task from moto. One row of the recovery rule per run; nothing written."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import subprocess
import sys
import uuid

import pytest

from sandbox.prefect_seed import PrefectSeeder
from tests.support.names import BASIC_AUTH, unique
from tests.e2e.test_operator import policy, secret
from tests.support.kubectl import KUBECTL, Kubectl, wait_for

pytestmark = pytest.mark.e2e
BIN = pathlib.Path(sys.executable).parent  # the console script kubectl-pwpp lives next to the interpreter


def why(kubectl: Kubectl, *args: str, plugin: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": kubectl.kubeconfig, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    cmd = [KUBECTL, "pwpp", "why", *args] if plugin else [sys.executable, "-m", "prefect_workpool_operator", "why", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_why_answers_each_row_and_changes_nothing(kubectl: Kubectl, namespace: str, prefect_server, moto,
                                                 sandbox) -> None:
    ns = kubectl.in_namespace(namespace)
    pool, other_pool = unique("why"), unique("other")
    cluster = sandbox.cluster()
    with PrefectSeeder(prefect_server.api_url) as seeder:
        seeder.create_ecs_pool(pool)
        seeder.create_ecs_pool(other_pool)
        deployment = seeder.create_deployment(pool)
        alive, gone, claimer_alive, claimer_gone, capped = seeder.create_runs(deployment, 5, {"type": "PENDING"})
        running = seeder.create_runs(deployment, 1, {"type": "RUNNING"})[0]
        elsewhere = seeder.create_runs(seeder.create_deployment(other_pool, name=other_pool), 1, {"type": "PENDING"})[0]
        alive_task = sandbox.run(cluster, run_id=alive)[0]
        gone_task = sandbox.run(cluster, run_id=gone)[0]
        sandbox.stop(cluster, gone_task)
        for run, task in ((alive, alive_task), (gone, gone_task)):
            seeder._request("PATCH", f"/flow_runs/{run}", json={"infrastructure_pid": f"{cluster}::{task}"})
        for run, worker in ((claimer_alive, "w-alive"), (claimer_gone, "w-gone"), (capped, "w-gone")):
            seeder.label_run_as_worker(run, worker, "ecs", pool)
            seeder.emit_submitted_event(worker, "ecs", run, pool)
        # One earlier requeue of `capped` (maxRequeuesPerRun 1): the state change Prefect records as an event.
        seeder.set_state(capped, {"type": "SCHEDULED", "name": "Requeued"})
        seeder.set_state(capped, {"type": "PENDING"})
        ns.apply(policy("why", prefect_server.api_url, pool,
                        ecs={"region": "us-east-1", "cluster": cluster, "endpointUrl": moto.endpoint_url},
                        staleRuns={"pendingTimeout": "30s", "maxRequeuesPerRun": 1}))

        oldest = max(dt.datetime.fromisoformat(seeder.read_run(r)["state"]["timestamp"])
                     for r in (alive, gone, claimer_alive, claimer_gone, capped))
        seeder.wait_for(lambda: seeder.read_events(
            {"event": {"name": ["prefect.flow-run.Requeued"]}, "resource": {"id": [f"prefect.flow-run.{capped}"]}}))
        wait_for(lambda: dt.datetime.now(dt.timezone.utc) - oldest > dt.timedelta(seconds=31), timeout=60,
                 interval=1, what="the runs to be PENDING past pendingTimeout")
        seeder.heartbeat_worker(pool, "w-alive")
        fresh = seeder.create_runs(deployment, 1, {"type": "PENDING"})[0]
        # Asked first: it stays "not stale" only until pendingTimeout (30 s) has passed, and each
        # `why` is a process of its own (seconds each on a loaded machine).
        answers = {"fresh": why(kubectl, f"{namespace}/why", fresh)}
        before = {r: seeder.read_run(r)["state"]["id"] for r in (alive, gone, claimer_alive, claimer_gone, capped)}

        for name, run in (("alive", alive), ("gone", gone), ("claimer_alive", claimer_alive),
                          ("claimer_gone", claimer_gone), ("capped", capped), ("running", running)):
            answers[name] = why(kubectl, f"{namespace}/why", run)
        by_module = why(kubectl, f"{namespace}/why", alive, plugin=False)
        unknown_policy = why(kubectl, f"{namespace}/nope", alive)
        unknown_run = why(kubectl, f"{namespace}/why", str(uuid.uuid4()))
        other = why(kubectl, f"{namespace}/why", elsewhere)
        usage = why(kubectl, "no-slash", alive)

        # Nothing was written: every run keeps its state (same state id), both tasks as they were.
        assert {r: seeder.read_run(r)["state"]["id"] for r in before} == before
    tasks = sandbox.ecs.describe_tasks(cluster=cluster, tasks=[alive_task, gone_task])["tasks"]
    assert {t["taskArn"]: t["lastStatus"] for t in tasks} == {alive_task: "RUNNING", gone_task: "STOPPED"}

    for name, proc in answers.items():
        assert proc.returncode == 0, (name, proc.stderr)
    out = {name: proc.stdout for name, proc in answers.items()}
    assert "row 1 of core.stale.decide" in out["alive"] and "hands off (InfrastructureAlive)" in out["alive"]
    assert f"alive: its task {cluster}::{alive_task}" in out["alive"]
    assert "row 2 of" in out["gone"] and "recover (TaskGone)" in out["gone"] and "stoppedReason" in out["gone"]
    assert "row 4 of" in out["claimer_alive"] and "hands off (ClaimerAlive)" in out["claimer_alive"]
    assert "'w-alive': online, the same process" in out["claimer_alive"]
    assert "row 5 of" in out["claimer_gone"] and "recover (ClaimerGone)" in out["claimer_gone"]
    assert "'w-gone': not online in the pool" in out["claimer_gone"]
    assert "Requeues:" in out["capped"] and "1 by this operator" in out["capped"]
    assert "cap exhausted: requeued 1 time(s), maxRequeuesPerRun 1 → onExhausted MarkCrashed" in out["capped"]
    assert "Reschedule (requeue 1 of at most 1)" in out["claimer_gone"]
    for name in ("gone", "claimer_gone", "capped"):  # a single reading cannot confirm a recovery
        assert "two readings at least 10s apart" in out[name], out[name]
    assert "not stale yet" in out["fresh"]
    assert "State:" in out["running"] and "RUNNING" in out["running"] and "moved on" in out["running"]
    def without_age(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("State:")]
    assert by_module.returncode == 0 and without_age(by_module.stdout) == without_age(out["alive"])

    assert unknown_policy.returncode == 3 and f"policy {namespace}/nope does not exist" in unknown_policy.stderr
    assert unknown_run.returncode == 4 and "does not exist in Prefect" in unknown_run.stderr
    assert other.returncode == 4 and f"work pool {other_pool!r}, not the policy's {pool!r}" in other.stderr
    assert usage.returncode == 2


def test_why_reads_secrets_and_never_prints_them(kubectl: Kubectl, namespace: str, prefect_auth_server) -> None:
    ns = kubectl.in_namespace(namespace)
    pool = unique("guarded-why")
    with PrefectSeeder(prefect_auth_server.api_url, auth=prefect_auth_server.auth) as seeder:
        seeder.create_ecs_pool(pool)
        run = seeder.create_runs(seeder.create_deployment(pool), 1, {"type": "PENDING"})[0]
    auth = {"basicAuthSecretRef": {"name": "prefect-auth", "key": "auth-string"}}
    ns.apply(policy("guarded", prefect_auth_server.api_url, pool, prefect={"auth": auth}, staleRuns={}))

    missing = why(kubectl, f"{namespace}/guarded", run)
    assert missing.returncode == 1 and f"Secret {namespace}/prefect-auth does not exist" in missing.stderr

    ns.apply(secret("prefect-auth", "auth-string", BASIC_AUTH))
    answer = why(kubectl, f"{namespace}/guarded", run)
    assert answer.returncode == 0, answer.stderr
    assert "not stale yet" in answer.stdout
    assert "s3cr3t-pass" not in answer.stdout + answer.stderr
