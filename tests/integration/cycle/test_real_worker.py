"""Recovery against the real prefect-aws 0.7.12 ECS worker (prefect 3.8.8), moto as ECS.

Each scenario has its own work pool, ECS cluster, worker process(es) and policy, and
runs policy cycles on real time every ``INTERVAL`` (the smallest interval a policy may
have), the way the operator's timer would. The scenarios run side by side in threads
(each with its own event loop) so the module takes about as long as its slowest one.
moto throttles RunTask per cluster, so a throttled scenario never slows another.

Figures (seconds from the proof to the recovery, live tasks per run) are printed and
collected in ``FIGURES``; "proof" is the moment the operator could first know: the
StopTask call, or the later of "PENDING for pendingTimeout" and "claimer offline".
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import pathlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import yaml

from prefect_workpool_operator.cycle.reconcile import CycleOutcome, PolicyRuntime, run_cycle
from sandbox.moto_server import MotoServer
from sandbox.prefect_seed import PrefectSeeder, scheduled_state, utcnow
from sandbox.prefect_server import PrefectServer
from sandbox.prefect_worker import (
    PrefectWorker,
    create_ecs_pool,
    default_ecs_template,
    ensure_worker_venv,
    worker_env,
)
from tests.support.ecs_sandbox import REGION, EcsSandbox
from tests.support.recovery import NoSecrets

pytestmark = pytest.mark.integration

INTERVAL = 10.0  # seconds between the policy's cycles
PENDING_TIMEOUT = 30.0
RUN_ID_TAG = "prefect.io/flow-run-id"
FIGURES: dict[str, Any] = {}
# A worker that keeps retrying a throttled RunTask: many attempts, no botocore retries
# inside one (so each attempt is one throttled request, about a second apart).
RETRY_FOR_LONG = {"PREFECT_INTEGRATIONS_AWS_ECS_WORKER_CREATE_TASK_RUN_MAX_ATTEMPTS": "1000",
                  "PREFECT_INTEGRATIONS_AWS_ECS_WORKER_CREATE_TASK_RUN_MIN_DELAY_SECONDS": "1",
                  "PREFECT_INTEGRATIONS_AWS_ECS_WORKER_CREATE_TASK_RUN_MAX_DELAY_JITTER_SECONDS": "1",
                  "AWS_MAX_ATTEMPTS": "1"}


@pytest.fixture(scope="module")
def worker_prefect() -> pathlib.Path:
    return ensure_worker_venv()


@pytest.fixture(scope="module")
def ecs_template(worker_prefect: pathlib.Path, prefect_server: PrefectServer, tmp_path_factory) -> dict[str, Any]:
    env = worker_env(prefect_server.api_url, "http://127.0.0.1:1", tmp_path_factory.mktemp("template-home"))
    return default_ecs_template(worker_prefect, env)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


class World:
    """One scenario's pool, cluster, workers and policy."""

    def __init__(self, name: str, seeder: PrefectSeeder, moto: MotoServer, sandbox: EcsSandbox,
                 prefect: pathlib.Path, template: dict[str, Any], workdir: pathlib.Path) -> None:
        self.name = name
        self.seeder = PrefectSeeder(seeder.api_url)
        self.moto = moto
        self.sandbox = sandbox
        self.prefect = prefect
        self.workdir = workdir
        self.pool = f"{name}-{uuid.uuid4().hex[:6]}"
        self.cluster = sandbox.cluster()
        tpl = _with_defaults(template, cluster=self.cluster, vpc_id=sandbox.vpc, launch_type="FARGATE")
        self.seeder.create_ecs_pool(self.pool, tpl)
        self.deployment = self.seeder.create_deployment(self.pool, name=self.pool)  # one deployment per pool
        self.workers: list[PrefectWorker] = []
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient()
        self.runtime = PolicyRuntime()
        self.body: dict[str, Any] = {
            "metadata": {"name": name, "namespace": "real", "generation": 1},
            "spec": {
                "prefect": {"apiUrl": seeder.api_url, "workPool": self.pool},
                "interval": f"{int(INTERVAL)}s",
                "ecs": {"region": REGION, "cluster": self.cluster, "endpointUrl": moto.endpoint_url},
                "staleRuns": {"pendingTimeout": f"{int(PENDING_TIMEOUT)}s"},
            },
            "status": {},
        }
        self.cycles: list[tuple[float, CycleOutcome]] = []
        self.next_cycle = time.monotonic()

    # -- workers ------------------------------------------------------------------------

    def worker(self, name: str | None = None, **settings: str) -> PrefectWorker:
        name = name or f"{self.name}-w{len(self.workers)}"
        env = worker_env(self.seeder.api_url, self.moto.endpoint_url, self.workdir / f"home-{len(self.workers)}",
                         **settings)
        w = PrefectWorker(self.prefect, env, self.pool, name, self.workdir / f"{name}.log")
        w.start()
        self.workers.append(w)
        return w

    def online(self, name: str) -> bool:
        return any(w["name"] == name and w["status"] == "ONLINE" for w in self.seeder.read_workers(self.pool))

    # -- runs and tasks ---------------------------------------------------------------------

    def run(self) -> str:
        return self.seeder.create_runs(self.deployment, 1, scheduled_state(utcnow()))[0]

    def state(self, run: str) -> tuple[str, str]:
        s = self.seeder.read_run(run)["state"]
        return s["type"], s["name"]

    def tasks(self, run: str) -> list[tuple[str, str]]:
        """(arn, lastStatus) of every task tagged with the run, running or stopped."""
        ecs = self.sandbox.ecs
        arns = [a for status in ("RUNNING", "STOPPED")
                for a in ecs.list_tasks(cluster=self.cluster, desiredStatus=status)["taskArns"]]
        if not arns:
            return []
        described = ecs.describe_tasks(cluster=self.cluster, tasks=arns, include=["TAGS"])["tasks"]
        return [(t["taskArn"], t["lastStatus"]) for t in described
                if any(tag["key"] == RUN_ID_TAG and tag["value"] == run for tag in t.get("tags") or [])]

    def live_tasks(self, run: str) -> int:
        return sum(1 for _, status in self.tasks(run) if status != "STOPPED")

    def throttle_run_task(self, count: int) -> None:
        self.moto.throttle("RunTask", count, match=self.cluster)

    # -- the policy -------------------------------------------------------------------------

    def cycle(self) -> CycleOutcome:
        """One cycle, no sooner than INTERVAL after the previous one."""
        time.sleep(max(0.0, self.next_cycle - time.monotonic()))
        started = time.monotonic()
        self.next_cycle = started + INTERVAL + 0.05
        outcome = self.loop.run_until_complete(run_cycle(self.body, http=self.http, secrets=NoSecrets(),
                                                         runtime=self.runtime, now=utcnow()))
        self.body["status"] = outcome.status
        self.cycles.append((started, outcome))
        return outcome

    def cycles_until(self, done: Callable[[], bool], timeout: float, check: Callable[[], None] = lambda: None) -> float:
        """Cycle until ``done()``; ``check()`` after every cycle. Returns when it became true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cycle()
            check()
            if done():
                return time.monotonic()
        raise AssertionError(f"{self.name}: not done within {timeout}s; last status "
                             f"{self.cycles[-1][1].status.get('staleRuns')}; "
                             f"{[c for c in self.cycles[-1][1].status['conditions'] if c['type'] == 'StaleRunsRecovered']}")

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.moto.throttle("RunTask", 0, match=self.cluster)
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


def _with_defaults(template: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    out = copy.deepcopy(template)
    for key, value in defaults.items():
        out["variables"]["properties"][key]["default"] = value
    # moto's RunTask adds up container-level memory (ECS accepts task-level only).
    out["job_configuration"]["task_definition"]["containerDefinitions"][0]["memory"] = 512
    return out


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pending_since(world: World, run: str) -> float:
    """The monotonic time at which ``run`` entered PENDING (from the server's timestamp)."""
    stamp = dt.datetime.fromisoformat(world.seeder.read_run(run)["state"]["timestamp"])
    return time.monotonic() - (utcnow() - stamp).total_seconds()


def stale_reason(outcome: CycleOutcome) -> str:
    return next(c["reason"] for c in outcome.status["conditions"] if c["type"] == "StaleRunsRecovered")


def requeued(world: World, run: str) -> bool:
    """Whether the last cycle recovered ``run`` (a live worker may have claimed it again since)."""
    return run in ((world.cycles[-1][1].status.get("lastRecovery") or {}).get("runIds") or []) \
        and world.cycles[-1][1].status["staleRuns"]["recovered"] > 0


def requeue_messages(world: World, run: str) -> list[str]:
    states = world.seeder._json("GET", f"/flow_run_states/?flow_run_id={run}")
    return [s.get("message") or "" for s in states if s.get("name") == "Requeued"]


# -- scenarios ------------------------------------------------------------------------------


def seed_incident(world: World) -> dict[str, Any]:
    """RunTask throttled, the worker SIGKILLed after the claim: recovered once, then
    submitted exactly once by a fresh worker."""
    world.throttle_run_task(10**6)
    first = world.worker(**RETRY_FOR_LONG)
    run = world.run()
    wait(lambda: world.state(run)[0] == "PENDING", 60, "the claim")
    wait(lambda: "Creating ECS task run" in first.log_tail(20000), 60, "a RunTask attempt")
    first.kill()
    world.throttle_run_task(0)
    claimed = pending_since(world, run)
    offline_at: list[float] = []

    def note_offline() -> None:
        if not offline_at and not world.online(first.name):
            offline_at.append(time.monotonic())

    recovered_at = world.cycles_until(lambda: requeued(world, run), 120, check=note_offline)
    assert world.tasks(run) == []
    proof = max(claimed + PENDING_TIMEOUT, offline_at[0] if offline_at else recovered_at)
    world.worker()  # a fresh worker picks the requeued run up
    wait(lambda: world.seeder.read_run(run).get("infrastructure_pid"), 90, "the fresh worker's task")
    # Hands off from now on: its task is alive. Two more cycles change nothing.
    for _ in range(2):
        world.cycle()
    assert world.state(run)[0] == "PENDING"
    assert len(world.tasks(run)) == 1  # submitted exactly once in all
    assert world.cycles[-1][1].status["staleRuns"]["totalRecovered"] == 1
    return {"proof_to_recovery_s": round(recovered_at - proof, 1), "tasks": len(world.tasks(run))}


def stopped_task_live_worker(world: World) -> dict[str, Any]:
    """The task stops (a TaskFailedToStart, say) while its worker lives: recovered within
    two intervals of the stop, and the true reason is in the run's state message."""
    world.worker()
    run = world.run()
    wait(lambda: world.seeder.read_run(run).get("infrastructure_pid"), 90, "the task")
    since = pending_since(world, run)
    # Healthy: past pendingTimeout with its task alive, it is left alone.
    world.cycles_until(lambda: time.monotonic() > since + PENDING_TIMEOUT + 2 * INTERVAL, 120)
    assert world.state(run)[0] == "PENDING"
    assert world.cycles[-1][1].status["staleRuns"]["skipped"]["infrastructureAlive"] == 1
    (arn, _), = world.tasks(run)
    world.sandbox.ecs.stop_task(cluster=world.cluster, task=arn, reason="Essential container exited")
    stopped = time.monotonic()
    max_live: list[int] = [0]

    def watch() -> None:
        max_live[0] = max(max_live[0], world.live_tasks(run))

    recovered_at = world.cycles_until(lambda: requeued(world, run), 60, watch)
    (message,) = requeue_messages(world, run)
    assert "stoppedReason 'Essential container exited'" in message and "no live worker" not in message
    assert recovered_at - stopped <= 2 * INTERVAL + 5
    # The live worker submits it again: one live task, never two.
    wait(lambda: world.live_tasks(run) == 1, 60, "the resubmitted task")
    watch()
    assert max_live[0] <= 1
    return {"proof_to_recovery_s": round(recovered_at - stopped, 1), "max_live_tasks": max_live[0]}


def killed_after_run_task(world: World) -> dict[str, Any]:
    """The worker dies right after RunTask, its task RUNNING: left alone; recovered soon
    after the task stops."""
    first = world.worker()
    run = world.run()
    wait(lambda: world.seeder.read_run(run).get("infrastructure_pid"), 90, "the task")
    first.kill()
    since = pending_since(world, run)
    world.cycles_until(lambda: time.monotonic() > since + PENDING_TIMEOUT + 3 * INTERVAL, 150)
    assert world.state(run)[0] == "PENDING"  # claimer gone, task alive: hands off
    assert stale_reason(world.cycles[-1][1]) == "InfrastructureAlive"
    (arn, _), = world.tasks(run)
    world.sandbox.ecs.stop_task(cluster=world.cluster, task=arn, reason="Task stopped by a test")
    stopped = time.monotonic()
    recovered_at = world.cycles_until(lambda: requeued(world, run), 60)
    assert recovered_at - stopped <= 2 * INTERVAL + 5
    return {"proof_to_recovery_s": round(recovered_at - stopped, 1)}


def live_worker_retrying(world: World) -> dict[str, Any]:
    """A live worker retries a throttled RunTask for longer than every timeout: never
    recovered; once the throttle lifts, one task."""
    world.throttle_run_task(10**6)
    worker = world.worker(**RETRY_FOR_LONG)
    run = world.run()
    wait(lambda: world.state(run)[0] == "PENDING", 60, "the claim")
    since = pending_since(world, run)
    live: list[int] = [0]

    def never_recovered() -> None:
        assert world.state(run)[0] == "PENDING", "a run whose claimer is alive was recovered"
        live[0] = max(live[0], world.live_tasks(run))

    world.cycles_until(lambda: time.monotonic() > since + PENDING_TIMEOUT + 4 * INTERVAL, 150, never_recovered)
    assert worker.running and stale_reason(world.cycles[-1][1]) == "ClaimerAlive"
    world.throttle_run_task(0)
    wait(lambda: world.seeder.read_run(run).get("infrastructure_pid"), 60, "the task after the throttle")
    for _ in range(2):
        world.cycle()
        never_recovered()
    assert live[0] <= 1 and len(world.tasks(run)) == 1
    return {"claimer_alive_for_s": round(time.monotonic() - since, 1), "max_live_tasks": live[0]}


def claim_visible(world: World, run: str) -> bool:
    return bool(world.seeder.read_events({"event": {"name": ["prefect.worker.submitted-flow-run"]},
                                          "related": {"id": [f"prefect.flow-run.{run}"]},
                                          "occurred": {"since": (utcnow() - dt.timedelta(minutes=5)).isoformat()}},
                                         limit=1))


def restarted_same_name(world: World) -> dict[str, Any]:
    """A worker restarted under the same name has forgotten its claims: they are released."""
    world.throttle_run_task(10**6)
    first = world.worker("same-name", **RETRY_FOR_LONG)
    run = world.run()
    wait(lambda: world.state(run)[0] == "PENDING", 60, "the claim")
    # The worker sends its submitted-flow-run event asynchronously: a kill before it reaches the
    # server leaves the claimer unknown (recovered too, but for another reason than this case's).
    wait(lambda: claim_visible(world, run), 60, "the claim's event")
    first.kill()
    second = world.worker("same-name", **RETRY_FOR_LONG)  # ONLINE under the claimer's name
    wait(lambda: world.seeder.read_events({"event": {"name": ["prefect.worker.started"]},
                                           "resource": {"labels": {"prefect.resource.name": ["same-name"]}},
                                           "occurred": {"since": (utcnow() - dt.timedelta(minutes=5)).isoformat()}},
                                          limit=10).__len__() >= 2, 60, "the second started event")
    restarted = time.monotonic()
    since = pending_since(world, run)
    recovered_at = world.cycles_until(lambda: requeued(world, run), 120)
    assert second.running and world.online("same-name")
    world.throttle_run_task(0)
    (message,) = requeue_messages(world, run)
    assert "'same-name' restarted since the claim" in message
    proof = max(since + PENDING_TIMEOUT, restarted)
    return {"proof_to_recovery_s": round(recovered_at - proof, 1)}


def stopped_cleanly(world: World) -> dict[str, Any]:
    """A worker stopped cleanly (SIGTERM) while retrying a throttled RunTask emits
    prefect.worker.stopped: its claims are released, and the message says so."""
    world.throttle_run_task(10**6)
    worker = world.worker(**RETRY_FOR_LONG)
    run = world.run()
    wait(lambda: world.state(run)[0] == "PENDING", 60, "the claim")
    wait(lambda: "Creating ECS task run" in worker.log_tail(20000), 60, "a RunTask attempt")
    worker.stop()
    stopped = time.monotonic()
    world.throttle_run_task(0)
    if world.state(run)[0] != "PENDING":  # the worker itself moved it on while stopping: nothing to recover
        return {"left_pending_by_clean_stop": False, "state": world.state(run)}
    since = pending_since(world, run)
    recovered_at = world.cycles_until(lambda: requeued(world, run), 120)
    (message,) = requeue_messages(world, run)
    assert f"{worker.name!r} stopped since the claim" in message, message
    return {"proof_to_recovery_s": round(recovered_at - max(since + PENDING_TIMEOUT, stopped), 1)}


SCENARIOS: dict[str, Callable[[World], dict[str, Any]]] = {
    "seed-incident": seed_incident,
    "stopped-live-worker": stopped_task_live_worker,
    "killed-after-runtask": killed_after_run_task,
    "live-retrying": live_worker_retrying,
    "restarted-same-name": restarted_same_name,
    "stopped-cleanly": stopped_cleanly,
}


def test_recovery_with_the_real_worker(prefect_server: PrefectServer, moto: MotoServer, sandbox: EcsSandbox,
                                       worker_prefect: pathlib.Path, ecs_template: dict[str, Any],
                                       tmp_path: pathlib.Path) -> None:
    seeder = PrefectSeeder(prefect_server.api_url)
    worlds = {name: World(name, seeder, moto, sandbox, worker_prefect, ecs_template, tmp_path / name)
              for name in SCENARIOS}
    for name in SCENARIOS:
        (tmp_path / name).mkdir()
    errors: dict[str, BaseException] = {}
    lock = threading.Lock()

    def play(name: str) -> None:
        try:
            figures = SCENARIOS[name](worlds[name])
            with lock:
                FIGURES[name] = figures
        except BaseException as exc:  # reported below, with the worker logs
            errors[name] = exc

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(SCENARIOS)) as pool:
            list(pool.map(play, SCENARIOS))
    finally:
        for world in worlds.values():
            world.close()
    print(f"\nreal-worker scenarios took {time.monotonic() - started:.0f}s; figures: {FIGURES}")
    if errors:
        logs = "\n".join(f"--- {w.name}:\n{w.log_tail(1500)}" for n in errors for w in worlds[n].workers)
        raise AssertionError(f"scenarios failed: {errors}\n{logs}")


EXAMPLES = sorted((pathlib.Path(__file__).parents[3] / "examples").glob("*/policy.yaml"))


def example_job_templates() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "PrefectWorkPoolPolicy" and doc["spec"].get("jobTemplate"):
                out.append((path.parent.name, doc["spec"]))
    return out


@pytest.mark.parametrize(("example", "spec"), example_job_templates(), ids=[e for e, _ in example_job_templates()])
def test_example_job_templates_apply_to_a_real_ecs_pool(example: str, spec: dict[str, Any], prefect_server: PrefectServer,
                                                        worker_prefect: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Each example's jobTemplate against a pool made by `prefect work-pool create --type ecs`
    (prefect-aws 0.7.12): every variable exists, the operator sets it, ConfigConsistent tells the truth."""
    pool = f"example-{uuid.uuid4().hex[:6]}"
    create_ecs_pool(worker_prefect, worker_env(prefect_server.api_url, "http://127.0.0.1:1", tmp_path / "home"), pool)
    declared = spec["jobTemplate"]["variables"]
    body = {"metadata": {"name": example, "namespace": "examples", "generation": 1},
            "spec": {"prefect": {"apiUrl": prefect_server.api_url, "workPool": pool},
                     "jobTemplate": {"variables": declared}, "staleRuns": spec.get("staleRuns") or {}},
            "status": {}}

    async def cycle() -> CycleOutcome:
        async with httpx.AsyncClient() as http:
            return await run_cycle(body, http=http, secrets=NoSecrets(), runtime=PolicyRuntime(), now=utcnow())

    outcome = asyncio.run(cycle())
    conditions = {c["type"]: (c["status"], c["reason"]) for c in outcome.status["conditions"]}
    assert conditions["JobTemplateSynced"] in {("True", "Repaired"), ("True", "InSync")}, outcome.status["conditions"]
    assert conditions["ConfigConsistent"] == ("True", "NoTaskStartTimeout")
    props = PrefectSeeder(prefect_server.api_url).read_pool(pool)["base_job_template"]["variables"]["properties"]
    assert {k: props[k]["default"] for k in declared} == declared
    assert "task_start_timeout_seconds" not in props  # 0.7.12 has no start timeout
