"""Smoke test of the Prefect sandbox (hack/sandbox): a real prefect 3.8.8 server.

Uses the session servers from tests/conftest.py. The first run builds
<repo>/.venv-prefect (or $PWO_PREFECT_VENV), ~35 s.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sandbox.prefect_seed import PrefectSeeder, late_state
from sandbox.prefect_server import PrefectServer

pytestmark = pytest.mark.integration

# The session server is shared with other tests: keep to a pool of our own.
POOL = f"ecs-smoke-{uuid.uuid4().hex[:6]}"

Seeded = tuple[PrefectSeeder, dict[str, list[str]]]


@pytest.fixture(scope="module")
def seeded(prefect_server: PrefectServer) -> Iterator[Seeded]:
    seeder = PrefectSeeder(prefect_server.api_url)
    pool = seeder.create_ecs_pool(POOL)
    assert pool["type"] == "ecs"
    variables = pool["base_job_template"]["variables"]["properties"]
    assert variables["task_start_timeout_seconds"]["default"] == 300
    assert variables["match_latest_revision_in_family"]["default"] is False
    seeder.create_queue(POOL, "smoke")
    dep = seeder.create_deployment(POOL, "smoke", queue="smoke")
    runs = {
        "pending": seeder.create_runs(dep, 3, {"type": "PENDING"}, tags=["smoke"]),
        "late": seeder.create_runs(dep, 2, late_state(60)),
    }
    yield seeder, runs
    seeder.close()


def pending_count(seeder: PrefectSeeder) -> int:
    return seeder.count_runs(
        {
            "flow_runs": {"state": {"type": {"any_": ["PENDING"]}}},
            "work_pools": {"name": {"any_": [POOL]}},
        }
    )


def test_runs_and_worker(seeded: Seeded) -> None:
    seeder, runs = seeded
    assert pending_count(seeder) == 3

    run = seeder.read_run(runs["late"][0])
    assert run["state"]["type"] == "SCHEDULED"
    assert run["work_queue_name"] == "smoke"

    seeder.heartbeat_worker(POOL, "smoke-worker", interval_seconds=30)
    online = seeder.read_workers(POOL, {"workers": {"status": {"any_": ["ONLINE"]}}})
    assert [w["name"] for w in online] == ["smoke-worker"]
    assert online[0]["status"] == "ONLINE"
    assert seeder.read_pool(POOL)["status"] == "READY"


def test_late_runs(seeded: Seeded) -> None:
    seeder, runs = seeded
    # The LATE_RUNS service loops every 5 s.
    seeder.wait_for(
        lambda: all(seeder.read_run(r)["state"]["name"] == "Late" for r in runs["late"]),
        timeout=45,
        interval=1,
    )
    late = seeder.count_runs(
        {"flow_runs": {"state": {"name": {"any_": ["Late"]}}}, "work_pools": {"name": {"any_": [POOL]}}}
    )
    assert late == 2


def test_submitted_event(seeded: Seeded) -> None:
    seeder, runs = seeded
    run_id = runs["pending"][0]
    seeder.emit_submitted_event("Smoke Worker", "ecs", run_id, POOL)

    def find() -> list[dict[str, Any]]:
        return seeder.read_events(
            {
                "event": {"name": ["prefect.worker.submitted-flow-run"]},
                "related": {"id": [f"prefect.flow-run.{run_id}"]},
            }
        )

    # Events are persisted in batches a few seconds after they arrive.
    events = seeder.wait_for(find, timeout=30, interval=0.5)
    assert events[0]["resource"]["prefect.resource.id"] == "prefect.worker.ecs.smoke-worker"
    assert events[0]["resource"]["prefect.resource.name"] == "Smoke Worker"


def test_restart_keeps_data(tmp_path: pathlib.Path) -> None:
    # Its own server: restarting the shared one would disturb other tests.
    with PrefectServer(tmp_path) as srv, PrefectSeeder(srv.api_url) as seeder:
        seeder.create_ecs_pool("kept")
        url = srv.api_url
        srv.stop()
        srv.stop()  # idempotent
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
        srv.start()
        assert srv.api_url == url
        assert seeder.read_pool("kept")["type"] == "ecs"


def test_basic_auth(prefect_auth_server: PrefectServer) -> None:
    url = prefect_auth_server.api_url
    assert prefect_auth_server.auth is not None
    user, _ = prefect_auth_server.auth
    assert httpx.get(f"{url}/health").json() is True  # stays open for probes
    assert httpx.post(f"{url}/flow_runs/count", json={}).status_code == 401
    assert httpx.post(f"{url}/flow_runs/count", json={}, auth=(user, "wrong")).status_code == 401
    with PrefectSeeder(url, auth=prefect_auth_server.auth) as seeder:
        name = f"authed-{uuid.uuid4().hex[:6]}"
        seeder.create_ecs_pool(name)
        assert seeder.read_pool(name)["type"] == "ecs"
