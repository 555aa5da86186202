"""What ECS's answers mean for a run's infrastructure: pure interpretation, no calls.

The adapter (``aws.ecs``) sends DescribeTasks/ListTasks and hands the answers here as
plain dicts; this module turns them into ``InfraReading``s. prefect-aws names a run's
task by its ``infrastructure_pid`` (``"{cluster}::{task_arn}"``) and tags every task it
starts with ``prefect.io/flow-run-id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect_workpool_operator.core.stale import InfraReading, Infrastructure, PendingRun

PID_SEPARATOR = "::"  # prefect-aws: infrastructure_pid = "{cluster}::{task_arn}"
RUN_ID_TAG = "prefect.io/flow-run-id"  # prefect-aws tags every task it starts with its run

# lastStatus of a task that may still run user code. The stopping ones count as alive:
# containers run until STOPPED (their stopTimeout, at most 2 min, plus teardown), so
# waiting one more cycle is cheap while requeueing then could start the flow twice.
LIVE_STATUSES = frozenset(
    {"PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"}
)
GONE_STATUSES = frozenset({"STOPPED", "DELETED"})

NOT_IN_REGION = InfraReading(Infrastructure.UNKNOWN, "its pid names no task in this region")
UNKNOWN_STATUS = InfraReading(Infrastructure.UNKNOWN, "its task has a status this operator does not know")


def parse_pid(pid: str | None) -> tuple[str, str] | None:
    """``"{cluster}::{task_arn}"`` → (cluster, task_arn); None for anything else."""
    if not pid or PID_SEPARATOR not in pid:
        return None
    cluster, _, task_arn = pid.partition(PID_SEPARATOR)
    if not cluster or not task_arn:
        return None
    return cluster, task_arn


def runs_by_pid(runs: Iterable[PendingRun]) -> tuple[dict[str, str], set[str]]:
    """Runs checked by their task (id → pid), and the rest, checked by the run-id tag scan."""
    with_pid = {r.id: r.infrastructure_pid for r in runs if r.infrastructure_pid and parse_pid(r.infrastructure_pid)}
    return {k: v for k, v in with_pid.items() if v}, {r.id for r in runs if r.id not in with_pid}


def pids_by_cluster(pids: Iterable[str], region: str) -> tuple[dict[str, dict[str, list[str]]], dict[str, InfraReading]]:
    """Pids grouped as cluster → task ARN → pids; pids naming no task in ``region`` answer UNKNOWN."""
    answers: dict[str, InfraReading] = {}
    by_cluster: dict[str, dict[str, list[str]]] = {}
    for pid in dict.fromkeys(pids):
        parsed = parse_pid(pid)
        if parsed is None or not in_region(region, *parsed):
            answers[pid] = NOT_IN_REGION
            continue
        cluster, task_arn = parsed
        by_cluster.setdefault(cluster, {}).setdefault(task_arn, []).append(pid)
    return by_cluster, answers


def in_region(region: str, cluster: str, task_arn: str) -> bool:
    """A task in another region is MISSING here whatever its state: we cannot tell."""
    return all(arn_region(x) in (None, region) for x in (cluster, task_arn))


def arn_region(value: str) -> str | None:
    parts = value.split(":")
    if not value.startswith("arn:") or len(parts) < 4:
        return None
    return parts[3] or None


def task_liveness(last_status: object) -> Infrastructure:
    status = str(last_status or "").upper()
    if status in LIVE_STATUSES:
        return Infrastructure.ALIVE
    if status in GONE_STATUSES:
        return Infrastructure.GONE
    return Infrastructure.UNKNOWN  # a status ECS may add later: don't guess


def task_readings(batch: list[str], answer: Mapping[str, Any]) -> dict[str, InfraReading]:
    """One DescribeTasks answer → a reading per asked ARN."""
    found: dict[str, InfraReading] = {}
    for task in answer.get("tasks") or []:
        arn = str(task.get("taskArn") or "")
        found[arn] = found[task_id(arn)] = task_reading(task)
    failures = {str(f.get("arn") or ""): str(f.get("reason") or "") for f in answer.get("failures") or []}
    states: dict[str, InfraReading] = {}
    for arn in batch:
        state = found.get(arn) or found.get(task_id(arn))
        if state is None:
            reason = failures.get(arn, failures.get(task_id(arn), "MISSING"))
            # MISSING (or silently absent) means ECS no longer knows the task; other
            # failure reasons say nothing about it.
            state = InfraReading(Infrastructure.GONE, "task unknown to ECS") if reason == "MISSING" else \
                InfraReading(Infrastructure.UNKNOWN, f"DescribeTasks failure {reason!r}")
        states[arn] = state
    return states


def task_reading(task: Mapping[str, Any]) -> InfraReading:
    """A described task's liveness; for a stopped one, what ECS says stopped it (the proof)."""
    liveness = task_liveness(task.get("lastStatus"))
    if liveness is not Infrastructure.GONE:
        return InfraReading(liveness, "" if liveness is Infrastructure.ALIVE else f"lastStatus {task.get('lastStatus')!r}")
    proof = [f"task {task_id(str(task.get('taskArn') or ''))} {str(task.get('lastStatus')).upper()}"]
    if task.get("stopCode"):
        proof.append(f"stopCode {task['stopCode']}")
    if task.get("stoppedReason"):
        proof.append(f"stoppedReason {clip(str(task['stoppedReason']))!r}")
    return InfraReading(Infrastructure.GONE, ", ".join(proof))


def tag_scan_readings(
    wanted: Iterable[str], tasks: Iterable[Mapping[str, Any]], *, complete: bool, detail: str
) -> dict[str, InfraReading]:
    """Runs without a pid, from the running tasks' run-id tags.

    A live tagged task → ALIVE; a tag with an unknown status → UNKNOWN; no tagged task →
    NONE_FOUND, but only when the scan saw every running task (``complete``); otherwise
    UNKNOWN with ``detail``. A STOPPED task found by its tag is no proof either way: the
    worker may have started another.
    """
    wanted = set(wanted)
    alive: set[str] = set()
    unsure: set[str] = set()
    for task in tasks:
        run_id = tag(task, RUN_ID_TAG)
        if run_id not in wanted:
            continue
        liveness = task_liveness(task.get("lastStatus"))
        if liveness is Infrastructure.ALIVE:
            alive.add(run_id)
        elif liveness is Infrastructure.UNKNOWN:
            unsure.add(run_id)
    rest = InfraReading(Infrastructure.NONE_FOUND) if complete else InfraReading(Infrastructure.UNKNOWN, detail)
    answers: dict[str, InfraReading] = {}
    for r in wanted:
        if r in alive:
            answers[r] = InfraReading(Infrastructure.ALIVE)
        elif r in unsure:
            answers[r] = UNKNOWN_STATUS
        else:
            answers[r] = rest
    return answers


def tag(task: Mapping[str, Any], key: str) -> str | None:
    for t in task.get("tags") or []:
        if t.get("key") == key:
            return str(t.get("value"))
    return None


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
