"""Prefect events read over REST: who claimed a run, how often runs were requeued, when
workers started and stopped, and a pool's requeues in all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.recovery_plan import REQUEUED_STATE_NAME
from prefect_workpool_operator.core.stale import WorkerLifecycle
from prefect_workpool_operator.prefect.rest import PrefectError, PrefectRest

EVENT_IDS_PER_CALL = 200  # run ids per events query (checked live; the next-page URL carries them)
COUNT_IDS_PER_CALL = 1000  # run ids per events count: one answer, no next-page URL
FLOW_RUN_PREFIX = "prefect.flow-run."
SUBMITTED_EVENT = "prefect.worker.submitted-flow-run"
EXECUTED_EVENT = "prefect.worker.executed-flow-run"
WORKER_STARTED_EVENT = "prefect.worker.started"
WORKER_STOPPED_EVENT = "prefect.worker.stopped"


@dataclass(frozen=True)
class Claim:
    """Who claimed a run, from its worker's events."""

    worker: str | None
    executed: bool = False
    at: datetime | None = None  # when the worker emitted submitted-flow-run (its own clock)


class EventsApi(PrefectRest):
    """Event reads (/events/filter, /events/count-by)."""

    async def claims(self, run_ids: list[str], since: datetime) -> dict[str, Claim]:
        """Who claimed each run (its latest prefect.worker.submitted-flow-run event) and whether
        the worker reported the infrastructure (prefect.worker.executed-flow-run)."""
        claims: dict[str, Claim] = {}
        for chunk in _chunks(run_ids, EVENT_IDS_PER_CALL):
            body = {
                "filter": {
                    "event": {"name": [SUBMITTED_EVENT, EXECUTED_EVENT]},
                    "related": {"id": [f"{FLOW_RUN_PREFIX}{i}" for i in chunk], "role": ["flow-run"]},
                    "occurred": {"since": since.isoformat()},
                    "order": "ASC",
                },
                "limit": 50,
            }
            page = await self._json("POST", "/events/filter", body)
            while True:
                for event in page.get("events") or []:
                    _record_claim(claims, event)
                next_page = page.get("next_page")
                if not next_page:
                    break
                # The server builds the link from its own base URL; keep ours (proxies, Cloud paths).
                page = await self._json("GET", "/events/filter/next?" + urlsplit(next_page).query)
        return claims

    async def requeue_counts(self, run_ids: list[str], since: datetime) -> dict[str, int]:
        """How often each run was requeued before: its ``prefect.flow-run.Requeued`` events."""
        counts: dict[str, int] = {}
        for chunk in _chunks(run_ids, COUNT_IDS_PER_CALL):
            body = {
                "filter": {
                    "event": {"name": [f"prefect.flow-run.{REQUEUED_STATE_NAME}"]},
                    "resource": {"id": [f"{FLOW_RUN_PREFIX}{i}" for i in chunk]},
                    "occurred": {"since": since.isoformat()},
                },
                "time_unit": "day",
                "time_interval": 1.0,
            }
            for row in await self._json("POST", "/events/count-by/resource", body):
                counts[str(row["value"]).removeprefix(FLOW_RUN_PREFIX)] = int(row["count"])
        return counts

    async def worker_lifecycle(self, names: list[str], since: datetime) -> dict[str, WorkerLifecycle]:
        """The latest ``prefect.worker.started`` / ``stopped`` event of each named worker since
        ``since``: one query (workers are few), paged if needed."""
        if not names:
            return {}
        body = {
            "filter": {
                "event": {"name": [WORKER_STARTED_EVENT, WORKER_STOPPED_EVENT]},
                "resource": {"id_prefix": ["prefect.worker."], "labels": {"prefect.resource.name": sorted(names)}},
                "occurred": {"since": since.isoformat()},
                "order": "ASC",
            },
            "limit": 50,
        }
        found: dict[str, WorkerLifecycle] = {}
        page = await self._json("POST", "/events/filter", body)
        while True:
            for event in page.get("events") or []:
                name = str((event.get("resource") or {}).get("prefect.resource.name") or "")
                at = _occurred(event)
                if name not in names or at is None:
                    continue  # the server matches labels with LIKE: keep exact names only
                life = found.get(name, WorkerLifecycle())
                if event.get("event") == WORKER_STARTED_EVENT:
                    found[name] = WorkerLifecycle(started=max(filter(None, (life.started, at))), stopped=life.stopped)
                else:
                    found[name] = WorkerLifecycle(started=life.started, stopped=max(filter(None, (life.stopped, at))))
            next_page = page.get("next_page")
            if not next_page:
                return found
            page = await self._json("GET", "/events/filter/next?" + urlsplit(next_page).query)

    async def requeued_total(self, pool: str, since: datetime) -> int:
        """Requeues of the pool's runs since ``since``: one count of their Requeued events.

        The operator is what names a state "Requeued", so this is its own tally, kept by
        Prefect (within its event retention): an operator restart cannot lose it.
        """
        body = {
            "filter": {
                "event": {"name": [f"prefect.flow-run.{REQUEUED_STATE_NAME}"]},
                "related": {"role": ["work-pool"], "labels": {"prefect.resource.name": [pool]}},
                "occurred": {"since": since.isoformat()},
            },
        }
        rows = await self._json("POST", "/events/count-by/event", body)
        if not isinstance(rows, list):
            raise PrefectError(health.BAD_RESPONSE, "events/count-by/event answered an unexpected body")
        return sum(int(row.get("count") or 0) for row in rows if isinstance(row, dict))


def _record_claim(claims: dict[str, Claim], event: dict[str, Any]) -> None:
    runs = [r["prefect.resource.id"].removeprefix(FLOW_RUN_PREFIX) for r in event.get("related") or []
            if r.get("prefect.resource.role") == "flow-run"]
    worker = (event.get("resource") or {}).get("prefect.resource.name")
    for run_id in runs:
        if event.get("event") == SUBMITTED_EVENT:  # ascending order: the latest claim wins
            claims[run_id] = Claim(worker=worker, executed=False, at=_occurred(event))
        elif event.get("event") == EXECUTED_EVENT:
            previous = claims.get(run_id)
            claims[run_id] = Claim(worker=previous.worker if previous else worker, executed=True,
                                   at=previous.at if previous else None)


def _occurred(event: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event["occurred"]))
    except (KeyError, ValueError):
        return None


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
