"""Condition sets for each way a cycle can end."""

import pytest

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.health import Failure, PoolObservation, health_conditions


def by_type(conditions):
    return {c.type: (c.status, c.reason) for c in conditions}


def test_healthy_pool() -> None:
    obs = PoolObservation("READY", 2, 1, late=4, pending=2, running=3, server_version="3.8.8")
    got = health_conditions(obs, None, pool="ecs", api_url="http://p/api")
    assert by_type(got) == {
        "Ready": ("True", "Reconciled"), "PrefectConnected": ("True", "Connected"), "WorkPoolReady": ("True", "PoolReady"),
    }
    assert "4 late, 2 pending, 3 running, 2 worker(s) online" in got[0].message
    assert "Prefect 3.8.8" in got[1].message


@pytest.mark.parametrize(("status", "reason"), [("NOT_READY", "PoolNotReady"), ("PAUSED", "PoolPaused"), ("??", "PoolStatusUnknown")])
def test_pool_not_ready_does_not_make_the_policy_unready(status: str, reason: str) -> None:
    got = by_type(health_conditions(PoolObservation(status, 0, 0, 0, 0, 0), None, pool="p", api_url="u"))
    assert got["WorkPoolReady"] == ("False", reason)
    assert got["Ready"] == ("True", "Reconciled")


@pytest.mark.parametrize(
    ("reason", "connected"),
    [
        (health.INVALID_SPEC, ("Unknown", "NotChecked")),
        (health.SECRET_NOT_FOUND, ("Unknown", "NotChecked")),
        (health.SECRET_KEY_NOT_FOUND, ("Unknown", "NotChecked")),
        (health.UNAUTHORIZED, ("False", "Unauthorized")),
        (health.FORBIDDEN, ("False", "Forbidden")),
        (health.UNREACHABLE, ("False", "Unreachable")),
        (health.INVALID_API_URL, ("False", "InvalidApiUrl")),
        (health.SERVER_TOO_OLD, ("False", "ServerTooOld")),
        (health.WORK_POOL_NOT_FOUND, ("True", "Connected")),
        (health.WORK_QUEUE_NOT_FOUND, ("True", "Connected")),
    ],
)
def test_failures(reason: str, connected: tuple[str, str]) -> None:
    got = health_conditions(None, Failure(reason, "detail"), pool="p", api_url="u")
    assert by_type(got)["Ready"] == ("False", reason)
    assert by_type(got)["PrefectConnected"] == connected
    assert got[0].message == "detail"


@pytest.mark.parametrize(("version", "old"), [("2.20.1", True), ("3.0.0", False), ("3.8.8", False), (None, False), ("v1.0", True)])
def test_server_too_old(version, old) -> None:
    assert health.server_too_old(version) is old
