"""Shared pieces of the recovery tests: a request recorder, a clock, state reads."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from prefect_workpool_operator.schema.models import StaleRunsSpec
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from prefect_workpool_operator.cycle.reconcile import RecoveryOutcome, recover_stale_runs
from sandbox.prefect_seed import PrefectSeeder

WRITE_PATHS = ("/set_state", "/bulk_set_state", "/labels")


class NoSecrets:
    """For policies without auth: a cycle that asked for a Secret would be a bug."""

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        raise AssertionError("no Secret should be read")


class Recorder:
    """httpx event hook: every request the operator's client sends."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list[httpx.Request]:
        return self.requests[mark:]

    @staticmethod
    def writes(requests: list[httpx.Request]) -> list[httpx.Request]:
        return [r for r in requests if r.method in ("PATCH", "DELETE") or r.url.path.endswith(WRITE_PATHS)]


def spec(**fields: Any) -> StaleRunsSpec:
    return StaleRunsSpec.model_validate({"pendingTimeout": "30s", **fields})


def pending_since(seeder: PrefectSeeder, run_ids: list[str]) -> list[dt.datetime]:
    """Every run's state timestamp, 200 per read (the server's page limit): a clock taken
    from a partial read could lie before some runs' thresholds."""
    out = []
    for start in range(0, len(run_ids), 200):
        chunk = run_ids[start : start + 200]
        runs = seeder.filter_runs({"flow_runs": {"id": {"any_": chunk}}, "limit": 200})
        out += [dt.datetime.fromisoformat(r["state"]["timestamp"]) for r in runs]
    assert len(out) == len(run_ids), "some runs were not found"
    return out


def clock_after(seeder: PrefectSeeder, run_ids: list[str], seconds: float = 31) -> dt.datetime:
    """A "now" at which every run in ``run_ids`` has been PENDING for ``seconds`` (per the server)."""
    return max(pending_since(seeder, run_ids)) + dt.timedelta(seconds=seconds)


def states(seeder: PrefectSeeder, run_ids: list[str]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for start in range(0, len(run_ids), 200):
        chunk = run_ids[start : start + 200]
        for r in seeder.filter_runs({"flow_runs": {"id": {"any_": chunk}}, "limit": 200}):
            out[r["id"]] = (r["state"]["type"], r["state"]["name"])
    return out


async def recover(
    client: PrefectClient, pool: str, now: dt.datetime, *, memory: RecoveryMemory | None = None,
    dry_run: bool = False, online: frozenset[str] | None = None, observations: int = 2,
    interval: dt.timedelta = dt.timedelta(seconds=1), infrastructure_check: Any = None, **fields: Any,
) -> RecoveryOutcome:
    """``observations`` cycles of recovery ``interval`` apart, the last at ``now``; the last outcome.

    A run is acted on only when seen recoverable twice an interval apart, so the default
    is two; the first is ``interval`` before ``now`` (the runs must be stale by then).
    """
    memory = memory or RecoveryMemory()
    outcome = None
    for k in range(observations - 1, -1, -1):
        workers = online if online is not None else frozenset(
            w["name"] for w in await client.read_workers(pool) if w.get("status") == "ONLINE")
        outcome = await recover_stale_runs(
            client, spec(**fields), pool=pool, queues=[], policy="ns/policy", online_workers=workers,
            dry_run=dry_run, memory=memory, now=now - k * interval, interval=interval,
            infrastructure_check=infrastructure_check,
        )
    assert outcome is not None
    return outcome
