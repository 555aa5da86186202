"""Seed a real Prefect server through its REST API, for tests and the demo.

Only ``httpx`` is needed (no prefect import), so this runs in the operator's venv
against a server from ``prefect_server.py``.

Writes are retried on 503 and on dropped connections: SQLite answers "database is
locked" as 503 even for sequential writes while the server's services run, and the
server sometimes drops a connection under that load. Creates are made safe to
retry (idempotency keys, upserts, 409 → read back) so a retry never duplicates.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import unicodedata
import uuid
from collections.abc import Callable
from typing import Any, Self, TypeVar

import httpx

T = TypeVar("T")

RETRY_STATUS = {502, 503, 504}
RETRY_ATTEMPTS = 10  # ≈13 s of back-off: SQLite stays locked for seconds under a busy suite
RETRY_BASE_DELAY = 0.2


class PrefectAPIError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        super().__init__(
            f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text[:1000]}"
        )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat()


def scheduled_state(at: dt.datetime, name: str | None = None) -> dict[str, Any]:
    """A SCHEDULED state for ``create_runs``; a time >15 s in the past makes the run Late.

    create_flow_run has no ``expected_start_time`` field (extra keys → 422); the
    server copies the first state's ``scheduled_time`` into expected_start_time and
    next_scheduled_start_time. ``name="Late"`` creates the run Late right away.
    """
    state: dict[str, Any] = {"type": "SCHEDULED", "state_details": {"scheduled_time": iso(at)}}
    if name:
        state["name"] = name
    return state


def late_state(seconds_ago: float = 60) -> dict[str, Any]:
    """SCHEDULED in the past; the LATE_RUNS service renames it "Late" within ~5 s."""
    return scheduled_state(utcnow() - dt.timedelta(seconds=seconds_ago))


def slugify(text: str) -> str:
    """Close enough to python-slugify's default, which prefect uses for worker ids."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    ascii_text = re.sub(r"['\"]+", "", ascii_text.lower())
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")


def default_ecs_base_job_template() -> dict[str, Any]:
    """A trimmed prefect-aws ECS template of the era that still had
    ``task_start_timeout_seconds`` (see FACTS.md); the server only checks that every
    ``{{ placeholder }}`` is a declared variable."""
    return {
        "job_configuration": {
            "command": "{{ command }}",
            "env": "{{ env }}",
            "labels": "{{ labels }}",
            "name": "{{ name }}",
            "cluster": "{{ cluster }}",
            "container_name": "{{ container_name }}",
            "match_latest_revision_in_family": "{{ match_latest_revision_in_family }}",
            "auto_deregister_task_definition": "{{ auto_deregister_task_definition }}",
            "task_start_timeout_seconds": "{{ task_start_timeout_seconds }}",
            "task_watch_poll_interval": "{{ task_watch_poll_interval }}",
            "network_configuration": "{{ network_configuration }}",
            "task_definition": {
                "containerDefinitions": [{"image": "{{ image }}", "name": "{{ container_name }}"}],
                "cpu": "{{ cpu }}",
                "family": "{{ family }}",
                "memory": "{{ memory }}",
                "executionRoleArn": "{{ execution_role_arn }}",
            },
            "task_run_request": {
                "launchType": "{{ launch_type }}",
                "cluster": "{{ cluster }}",
                "overrides": {
                    "containerOverrides": [
                        {
                            "name": "{{ container_name }}",
                            "command": "{{ command }}",
                            "environment": "{{ env }}",
                            "cpu": "{{ cpu }}",
                            "memory": "{{ memory }}",
                        }
                    ],
                    "cpu": "{{ cpu }}",
                    "memory": "{{ memory }}",
                    "taskRoleArn": "{{ task_role_arn }}",
                },
                "tags": "{{ labels }}",
                "taskDefinition": "{{ task_definition_arn }}",
            },
        },
        "variables": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "title": "Name"},
                "env": {
                    "type": "object",
                    "title": "Environment Variables",
                    "additionalProperties": {"type": "string"},
                },
                "labels": {
                    "type": "object",
                    "title": "Labels",
                    "additionalProperties": {"type": "string"},
                },
                "command": {"type": "string", "title": "Command"},
                "cluster": {
                    "type": "string",
                    "title": "Cluster",
                    "description": "ECS cluster name or ARN; the default cluster if unset.",
                },
                "image": {"type": "string", "title": "Image"},
                "family": {"type": "string", "title": "Family"},
                "container_name": {"type": "string", "title": "Container Name"},
                "cpu": {"type": "integer", "title": "CPU"},
                "memory": {"type": "integer", "title": "Memory"},
                "launch_type": {
                    "type": "string",
                    "title": "Launch Type",
                    "enum": ["FARGATE", "EC2", "EXTERNAL", "FARGATE_SPOT"],
                    "default": "FARGATE",
                },
                "execution_role_arn": {"type": "string", "title": "Execution Role ARN"},
                "task_role_arn": {"type": "string", "title": "Task Role ARN"},
                "task_definition_arn": {"type": "string", "title": "Task Definition Arn"},
                "network_configuration": {"type": "object", "title": "Network Configuration"},
                "match_latest_revision_in_family": {
                    "type": "boolean",
                    "title": "Match Latest Revision In Family",
                    "default": False,
                },
                "auto_deregister_task_definition": {
                    "type": "boolean",
                    "title": "Auto Deregister Task Definition",
                    "default": False,
                },
                "task_start_timeout_seconds": {
                    "type": "integer",
                    "title": "Task Start Timeout Seconds",
                    "description": "How long the worker waits for the task to leave PENDING.",
                    "default": 300,
                },
                "task_watch_poll_interval": {
                    "type": "number",
                    "title": "Task Watch Poll Interval",
                    "default": 5.0,
                },
            },
        },
    }


class PrefectSeeder:
    def __init__(
        self,
        api_url: str,
        auth: tuple[str, str] | None = None,
        *,
        timeout: float = 30.0,
        worker_prefect_version: str | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.client = httpx.Client(base_url=self.api_url + "/", auth=auth, timeout=timeout)
        self._worker_prefect_version = worker_prefect_version

    # -- plumbing ---------------------------------------------------------------

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kw: Any) -> httpx.Response:
        """Send with retries; raise PrefectAPIError on a non-2xx not listed in ``ok``."""
        delay = RETRY_BASE_DELAY
        for attempt in range(RETRY_ATTEMPTS):
            last = attempt == RETRY_ATTEMPTS - 1
            try:
                resp = self.client.request(method, path.lstrip("/"), **kw)
            except httpx.TransportError:
                if last:
                    raise
            else:
                if resp.status_code not in RETRY_STATUS or last:
                    if resp.is_success or resp.status_code in ok:
                        return resp
                    raise PrefectAPIError(resp)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work pools, queues, deployments ---------------------------------------

    def create_ecs_pool(self, name: str, base_job_template: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {
            "name": name,
            "type": "ecs",
            "base_job_template": base_job_template or default_ecs_base_job_template(),
        }
        resp = self._request("POST", "/work_pools/", json=body, ok=(409,))
        if resp.status_code == 409:
            # Our own earlier attempt may have landed before the connection dropped.
            return dict(self._json("GET", f"/work_pools/{name}"))
        return dict(resp.json())

    def read_pool(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/work_pools/{name}"))

    def create_queue(self, pool: str, name: str) -> dict[str, Any]:
        resp = self._request("POST", f"/work_pools/{pool}/queues", json={"name": name}, ok=(409,))
        if resp.status_code == 409:
            return dict(self._json("GET", f"/work_pools/{pool}/queues/{name}"))
        return dict(resp.json())

    def create_flow(self, name: str = "demo-flow") -> str:
        # POST /flows/ returns the existing flow for a known name: safe to retry.
        return str(self._json("POST", "/flows/", json={"name": name})["id"])

    def create_deployment(
        self, pool: str, name: str = "demo", queue: str | None = None, *, flow_name: str = "demo-flow"
    ) -> str:
        flow_id = self.create_flow(flow_name)
        body: dict[str, Any] = {
            "name": name,
            "flow_id": flow_id,
            "work_pool_name": pool,
            "entrypoint": "flows/demo.py:demo",
        }
        if queue:
            body["work_queue_name"] = queue
        # Upserts on (flow, name): safe to retry.
        return str(self._json("POST", "/deployments/", json=body)["id"])

    # -- flow runs ---------------------------------------------------------------

    def create_runs(self, deployment_id: str, n: int, state: dict[str, Any], **fields: Any) -> list[str]:
        """Create ``n`` runs of a deployment directly in ``state`` (one call each).

        ``fields`` go into the DeploymentFlowRunCreate body (tags, labels,
        parameters, work_queue_name, job_variables, ...). Each run gets its own
        idempotency key so a retried POST returns the same run instead of a second one.
        """
        ids: list[str] = []
        for _ in range(n):
            body = {"state": state, "idempotency_key": f"seed-{uuid.uuid4()}", **fields}
            ids.append(str(self._json("POST", f"/deployments/{deployment_id}/create_flow_run", json=body)["id"]))
        return ids

    def create_runs_bulk(self, deployment_id: str, n: int, state: dict[str, Any], **fields: Any) -> list[str]:
        """Like ``create_runs`` but 100 per call (``create_flow_run/bulk``): for thousands of runs.

        SQLite answers a locked database per item (status FAILED) rather than with a 503;
        the failed items are sent again with the same idempotency keys.
        """
        ids: list[str] = []
        for start in range(0, n, 100):
            todo = [
                {"state": state, "idempotency_key": f"seed-{uuid.uuid4()}", **fields}
                for _ in range(min(100, n - start))
            ]
            for attempt in range(RETRY_ATTEMPTS):
                answer = self._json("POST", f"/deployments/{deployment_id}/create_flow_run/bulk", json=todo)
                results = answer["results"]
                ids += [str(r["flow_run_id"]) for r in results if r["status"] == "CREATED"]
                todo = [item for item, r in zip(todo, results) if r["status"] != "CREATED"]
                if not todo:
                    break
                time.sleep(RETRY_BASE_DELAY * 2**attempt)
            if todo:
                raise RuntimeError(f"bulk create kept failing for {len(todo)} runs")
        return ids

    def set_state(self, run_id: str, state: dict[str, Any], force: bool = True) -> dict[str, Any]:
        # force=True by default: seeding sets up a scenario, it doesn't simulate a
        # well-behaved client (the operator must never force; see FACTS.md).
        return dict(self._json("POST", f"/flow_runs/{run_id}/set_state", json={"state": state, "force": force}))

    def read_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/flow_runs/{run_id}"))

    def count_runs(self, body: dict[str, Any]) -> int:
        return int(self._json("POST", "/flow_runs/count", json=body))

    def filter_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self._json("POST", "/flow_runs/filter", json=body))

    # -- workers -------------------------------------------------------------------

    def heartbeat_worker(self, pool: str, name: str, interval_seconds: int = 30) -> None:
        self._request(
            "POST",
            f"/work_pools/{pool}/workers/heartbeat",
            json={"name": name, "heartbeat_interval_seconds": interval_seconds},
        )

    def read_workers(self, pool: str, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self._json("POST", f"/work_pools/{pool}/workers/filter", json=body or {}))

    def _worker_version(self) -> str:
        # Real events carry the *worker's* prefect version; a simulated worker
        # claims the server's.
        if self._worker_prefect_version is None:
            self._worker_prefect_version = str(self._json("GET", "/admin/version"))
        return self._worker_prefect_version

    def submitted_event(self, worker_name: str, worker_type: str, run_id: str, pool: str) -> dict[str, Any]:
        """Build ``prefect.worker.submitted-flow-run`` as prefect 3.8.8's BaseWorker does.

        workers/base.py: resource = BaseWorker._event_resource(); related =
        job configuration's related objects (deployment, flow, flow-run, in that
        order, each via object_as_related_resource), then the union of their tags as
        ``prefect.tag.<tag>`` (sorted), then the work pool.
        """
        run = self.read_run(run_id)
        related: list[dict[str, str]] = []
        tags: set[str] = set(run.get("tags") or [])
        if run.get("deployment_id"):
            dep = dict(self._json("GET", f"/deployments/{run['deployment_id']}"))
            tags.update(dep.get("tags") or [])
            related.append(
                {
                    "prefect.resource.id": f"prefect.deployment.{dep['id']}",
                    "prefect.resource.role": "deployment",
                    "prefect.resource.name": dep["name"],
                }
            )
        flow = dict(self._json("GET", f"/flows/{run['flow_id']}"))
        tags.update(flow.get("tags") or [])
        related.append(
            {
                "prefect.resource.id": f"prefect.flow.{flow['id']}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow["name"],
            }
        )
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{run['id']}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": run["name"],
            }
        )
        related += [{"prefect.resource.id": f"prefect.tag.{t}", "prefect.resource.role": "tag"} for t in sorted(tags)]
        wp = self.read_pool(pool)
        related.append(
            {
                "prefect.resource.id": f"prefect.work-pool.{wp['id']}",
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": wp["name"],
            }
        )
        return {
            "id": str(uuid.uuid4()),
            "occurred": iso(utcnow()),
            "event": "prefect.worker.submitted-flow-run",
            "resource": {
                "prefect.resource.id": f"prefect.worker.{worker_type}.{slugify(worker_name)}",
                "prefect.resource.name": worker_name,
                "prefect.version": self._worker_version(),
                "prefect.worker-type": worker_type,
            },
            "related": related,
            "payload": {},
        }

    def worker_event(self, event: str, worker_name: str, worker_type: str, pool: str) -> dict[str, Any]:
        """``prefect.worker.started`` / ``stopped`` as prefect 3.8.8's BaseWorker emits them:
        the worker as resource, its work pool as the related resource, occurring now."""
        wp = self.read_pool(pool)
        return {
            "id": str(uuid.uuid4()),
            "occurred": iso(utcnow()),
            "event": event,
            "resource": {
                "prefect.resource.id": f"prefect.worker.{worker_type}.{slugify(worker_name)}",
                "prefect.resource.name": worker_name,
                "prefect.version": self._worker_version(),
                "prefect.worker-type": worker_type,
            },
            "related": [{
                "prefect.resource.id": f"prefect.work-pool.{wp['id']}",
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": wp["name"],
            }],
            "payload": {},
        }

    def read_events(self, event_filter: dict[str, Any], limit: int = 50) -> list[dict[str, Any]]:
        """``POST /events/filter``; events show up a few seconds after they occur."""
        body = {"filter": event_filter, "limit": limit}
        return list(self._json("POST", "/events/filter", json=body)["events"])

    def emit_events(self, events: list[dict[str, Any]]) -> None:
        # Events carry their own ids, so a retried POST doesn't double them.
        self._request("POST", "/events", json=events)

    def emit_submitted_event(self, worker_name: str, worker_type: str, run_id: str, pool: str) -> None:
        self.emit_events([self.submitted_event(worker_name, worker_type, run_id, pool)])

    def label_run_as_worker(self, run_id: str, worker_name: str, worker_type: str, pool: str) -> None:
        """Labels a 3.8 worker puts on a run right after the submitted event
        (BaseWorker._give_worker_labels_to_flow_run) — a second ownership signal."""
        wp = self.read_pool(pool)
        self._request(
            "PATCH",
            f"/flow_runs/{run_id}/labels",
            json={
                "prefect.worker.name": worker_name,
                "prefect.worker.type": worker_type,
                "prefect.work-pool.name": wp["name"],
                "prefect.work-pool.id": str(wp["id"]),
            },
        )

    def wait_for(self, predicate: Callable[[], T], timeout: float = 60, interval: float = 1.0) -> T:
        """Poll until ``predicate()`` is truthy (e.g. runs turning Late, events persisted)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() >= deadline:
                if not value:
                    raise TimeoutError(f"condition not met within {timeout}s")
                return value
            time.sleep(interval)
