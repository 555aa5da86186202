"""ECS calls: the worker service (DescribeServices, UpdateService) and the run tasks
(DescribeTasks, ListTasks). What the task answers mean is ``core.infrastructure``'s."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_workpool_operator.core import infrastructure
from prefect_workpool_operator.core.stale import InfraReading, Infrastructure, PendingRun
from prefect_workpool_operator.aws.transport import CALL_BUDGET_EXHAUSTED, SERVICE_NOT_FOUND, THROTTLED, AwsError, AwsTransport, chunks

log = logging.getLogger(__name__)

DESCRIBE_TASKS_MAX = 100  # ECS: at most 100 tasks per DescribeTasks
LIST_TASKS_MAX = 100  # ECS: at most 100 ARNs per ListTasks page
DEFAULT_MAX_LIST_PAGES = 5  # pid-less runs: scan at most 500 running tasks per cycle


@dataclass(frozen=True)
class ServiceState:
    """An ECS service as DescribeServices/UpdateService report it."""

    arn: str
    status: str  # ACTIVE or DRAINING (INACTIVE is reported as ServiceNotFound)
    desired: int
    running: int
    pending: int
    deployments: int
    rollout_in_progress: bool  # some deployment's rolloutState is IN_PROGRESS

    @property
    def deployment_in_progress(self) -> bool:
        return self.deployments > 1 or self.rollout_in_progress


class EcsCalls(AwsTransport):
    """The ECS side of a policy's AWS client."""

    max_list_pages: int = DEFAULT_MAX_LIST_PAGES

    async def describe_service(self, cluster: str, service: str) -> ServiceState:
        """One DescribeServices call."""
        answer = await self._call("ecs", "describe_services", {"cluster": cluster, "services": [service]})
        services = answer.get("services") or []
        if not services or services[0].get("status") == "INACTIVE":
            raise self._failed(AwsError(
                SERVICE_NOT_FOUND,
                f"ECS service {service!r} does not exist in cluster {cluster!r} ({self.region})",
                operation="DescribeServices",
            ))
        return _service_state(services[0])

    async def set_desired_count(self, cluster: str, service: str, desired: int) -> ServiceState:
        """One UpdateService call; returns the service as the update left it."""
        if desired < 0:
            raise ValueError("desiredCount cannot be negative")
        answer = await self._call(
            "ecs", "update_service", {"cluster": cluster, "service": service, "desiredCount": desired}
        )
        return _service_state(answer["service"])

    # -- infrastructure checks (never raise: failures answer UNKNOWN) -----------------

    async def task_states(self, pids: Iterable[str]) -> dict[str, InfraReading]:
        """What became of the task behind each prefect-aws pid (``"{cluster}::{task_arn}"``).

        DescribeTasks per cluster, ≤100 tasks per call; ``core.infrastructure`` reads the
        answers. A pid that is not ``cluster::arn``, names another region, or could not
        be checked (error, budget spent) → UNKNOWN with the reason. After a Throttled
        answer no further call is made this check.
        """
        by_cluster, answers = infrastructure.pids_by_cluster(pids, self.region)
        stop_all: AwsError | None = None
        for cluster, tasks in by_cluster.items():
            skip = stop_all
            for batch in chunks(list(tasks), DESCRIBE_TASKS_MAX):
                states: dict[str, InfraReading] = {}
                if skip is None:
                    try:
                        answer = await self._call("ecs", "describe_tasks", {"cluster": cluster, "tasks": batch})
                        states = infrastructure.task_readings(batch, answer)
                    except AwsError as exc:
                        # Skip the rest of this cluster; after throttling (or with the budget spent) stop calling at all.
                        skip = exc
                        if exc.reason in (THROTTLED, CALL_BUDGET_EXHAUSTED):
                            stop_all = exc
                unknown = InfraReading(Infrastructure.UNKNOWN, unknown_detail(skip))
                for arn in batch:
                    for pid in tasks[arn]:
                        answers[pid] = states.get(arn, unknown)
        return answers

    async def tasks_for_runs(self, cluster: str, run_ids: Iterable[str]) -> dict[str, InfraReading]:
        """For runs without a pid: is a live task tagged ``prefect.io/flow-run-id=<run>``?

        One scan serves every run: ListTasks (desiredStatus RUNNING, ≤``max_list_pages``
        pages of 100) then DescribeTasks with tags, 100 per call
        (``core.infrastructure.tag_scan_readings`` reads them). On an error, a spent
        budget or more running tasks than the page bound, the scan is incomplete.
        """
        wanted = set(run_ids)
        if not wanted:
            return {}
        tasks: list[Mapping[str, Any]] = []
        detail = f"more than {self.max_list_pages * LIST_TASKS_MAX} running tasks to scan"
        complete = False
        try:
            arns = await self._running_task_arns(cluster)
            if arns is not None:
                for batch in chunks(arns, DESCRIBE_TASKS_MAX):
                    answer = await self._call(
                        "ecs", "describe_tasks", {"cluster": cluster, "tasks": batch, "include": ["TAGS"]}
                    )
                    tasks.extend(answer.get("tasks") or [])
                complete = True
        except AwsError as exc:
            detail = unknown_detail(exc)  # recorded in last_error (or the budget)
        return infrastructure.tag_scan_readings(wanted, tasks, complete=complete, detail=detail)

    async def _running_task_arns(self, cluster: str) -> list[str] | None:
        """Every task ARN with desiredStatus RUNNING, or None when there are more than the bound."""
        arns: list[str] = []
        token: str | None = None
        for _ in range(self.max_list_pages):
            params: dict[str, Any] = {"cluster": cluster, "desiredStatus": "RUNNING", "maxResults": LIST_TASKS_MAX}
            if token:
                params["nextToken"] = token
            page = await self._call("ecs", "list_tasks", params)
            arns.extend(page.get("taskArns") or [])
            token = page.get("nextToken")
            if not token:
                return arns
        log.warning(
            "ECS cluster %r runs more than %d tasks: runs without infrastructure_pid are left alone this cycle",
            cluster, self.max_list_pages * LIST_TASKS_MAX,
        )
        return None


class EcsInfrastructureCheck:
    """``recovery.InfrastructureCheck`` for ECS.

    Runs with a pid are checked by their task (DescribeTasks, grouped by the pid's
    cluster); runs without one, or with a pid that is not ``cluster::arn``, by the
    ``prefect.io/flow-run-id`` tag of the running tasks of the policy's cluster. Without
    a cluster those runs are left out (NOT_CHECKED). Pids go first: they are cheap
    (≤3 calls for 300 runs) while the tag scan grows with the cluster's task count,
    and there is no scan once ECS has throttled this cycle. Never raises: failures
    answer UNKNOWN and leave their reason in ``client.last_error``; the caller calls
    ``client.start_cycle()`` once per cycle.
    """

    def __init__(self, client: EcsCalls, cluster: str | None) -> None:
        self.client = client
        self.cluster = cluster or None

    async def check(self, runs: list[PendingRun]) -> dict[str, InfraReading]:
        with_pid, pidless = infrastructure.runs_by_pid(runs)
        answers: dict[str, InfraReading] = {}
        if with_pid:
            states = await self.client.task_states(with_pid.values())
            answers = {run_id: states.get(pid, InfraReading(Infrastructure.UNKNOWN)) for run_id, pid in with_pid.items()}
        if not pidless or not self.cluster:
            return answers
        error = self.client.last_error
        if error is not None and error.reason == THROTTLED:
            # ECS just throttled us: a scan would only add to it. Hold until next cycle.
            answers.update(dict.fromkeys(pidless, InfraReading(Infrastructure.UNKNOWN, unknown_detail(error))))
        else:
            answers.update(await self.client.tasks_for_runs(self.cluster, pidless))
        return answers


def unknown_detail(exc: AwsError | None) -> str:
    if exc is None:
        return ""
    if exc.reason == CALL_BUDGET_EXHAUSTED:
        return "the AWS call budget of this cycle is spent"
    return f"ECS {exc.operation or 'call'}: {exc.reason}"


def _service_state(raw: Mapping[str, Any]) -> ServiceState:
    deployments = raw.get("deployments") or []
    return ServiceState(
        arn=str(raw.get("serviceArn") or ""),
        status=str(raw.get("status") or ""),
        desired=int(raw.get("desiredCount") or 0),
        running=int(raw.get("runningCount") or 0),
        pending=int(raw.get("pendingCount") or 0),
        deployments=len(deployments),
        rollout_in_progress=any(d.get("rolloutState") == "IN_PROGRESS" for d in deployments),
    )
