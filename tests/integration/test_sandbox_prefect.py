"""Smoke test of the Prefect sandbox (hack/sandbox): a real prefect 3.8.8 server.

The first run builds <repo>/.venv-prefect (or $PWO_PREFECT_VENV), ~40 s.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator

import httpx
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "hack" / "sandbox"))

from prefect_seed import PrefectSeeder, late_state  # noqa: E402
from prefect_server import PrefectServer  # noqa: E402

POOL = "ecs-smoke"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with PrefectServer(tmp_path_factory.mktemp("prefect")) as srv:
        yield srv


@pytest.fixture(scope="module")
def seeded(server: PrefectServer) -> Iterator[tuple[PrefectSeeder, dict[str, list[str]]]]:
    seeder = PrefectSeeder(server.api_url)
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


def test_runs_and_worker(seeded: tuple[PrefectSeeder, dict[str, list[str]]]) -> None:
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


def test_late_runs(seeded: tuple[PrefectSeeder, dict[str, list[str]]]) -> None:
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


def test_submitted_event(seeded: tuple[PrefectSeeder, dict[str, list[str]]]) -> None:
    seeder, runs = seeded
    run_id = runs["pending"][0]
    seeder.emit_submitted_event("Smoke Worker", "ecs", run_id, POOL)

    def find() -> list[dict[str, object]]:
        body = {
            "filter": {
                "event": {"name": ["prefect.worker.submitted-flow-run"]},
                "related": {"id": [f"prefect.flow-run.{run_id}"]},
            },
            "limit": 10,
        }
        return list(seeder._json("POST", "/events/filter", json=body)["events"])

    # Events are persisted in batches a few seconds after they arrive.
    events = seeder.wait_for(find, timeout=30, interval=0.5)
    assert events[0]["resource"]["prefect.resource.id"] == "prefect.worker.ecs.smoke-worker"
    assert events[0]["resource"]["prefect.resource.name"] == "Smoke Worker"


def test_restart_keeps_data(server: PrefectServer, seeded: tuple[PrefectSeeder, dict[str, list[str]]]) -> None:
    seeder, _ = seeded
    url = server.api_url
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)
    server.start()
    assert server.api_url == url
    assert pending_count(seeder) == 3


def test_basic_auth(tmp_path: pathlib.Path) -> None:
    with PrefectServer(tmp_path, auth_string="admin:s3cret") as srv:
        assert httpx.get(f"{srv.api_url}/health").json() is True
        assert httpx.post(f"{srv.api_url}/flow_runs/count", json={}).status_code == 401
        assert httpx.post(f"{srv.api_url}/flow_runs/count", json={}, auth=("admin", "wrong")).status_code == 401
        with PrefectSeeder(srv.api_url, auth=srv.auth) as seeder:
            seeder.create_ecs_pool("authed")
            assert seeder.read_pool("authed")["type"] == "ecs"
