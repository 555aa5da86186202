"""Flow runs over REST: reads and counts, the PENDING runs stale-run recovery lists, and
its state writes (guarded: only runs still PENDING)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.recovery_plan import WRITE_BATCH as BULK_LIMIT
from prefect_workpool_operator.prefect.rest import PrefectError, PrefectRest, parse_time, quote_segment

PAGE_OVERLAP = 50  # runs re-read at each offset page boundary (only without expected start times)


class FlowRunsApi(PrefectRest):
    """Flow run calls."""

    async def read_flow_run(self, run_id: str) -> dict[str, Any] | None:
        """One flow run; None when the server does not know it (``why``)."""
        try:
            run = await self._json("GET", f"/flow_runs/{quote_segment(run_id)}")
        except PrefectError as exc:
            if exc.status_code in (404, 422):  # 422: not a UUID
                return None
            raise
        return run if isinstance(run, dict) else None

    async def count_runs(self, body: dict[str, Any]) -> int:
        count = await self._json("POST", "/flow_runs/count", body)
        if not isinstance(count, int):
            raise PrefectError(health.BAD_RESPONSE, "flow_runs/count answered an unexpected body")
        return count

    async def filter_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        runs = await self._json("POST", "/flow_runs/filter", body)
        if not isinstance(runs, list):
            raise PrefectError(health.BAD_RESPONSE, "flow_runs/filter answered an unexpected body")
        return runs

    async def pending_candidates(
        self, scope: dict[str, Any], expected_before: datetime | None, tags: list[str], *, page_size: int = 200,
        max_pages: int = 100, excluding: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """PENDING runs expected to start before ``expected_before`` (None: any), oldest first,
        every page; ``excluding``: run ids left out by the server (runs already known).

        Paged by key, not offset: each page asks for runs expected at or after the last
        page's latest time, leaving out the runs already read at exactly that time. Runs
        leaving PENDING meanwhile (workers start them) shift nothing, so no run is skipped
        and no page is re-read (offset pages had to overlap). Every PENDING run has an
        expected start (the server sets it with the run's first state).
        """
        flow_runs: dict[str, Any] = {"state": {"type": {"any_": ["PENDING"]}}}
        if expected_before is not None:
            flow_runs["expected_start_time"] = {"before_": expected_before.isoformat()}
        if tags:
            flow_runs["tags"] = {"all_": list(tags)}
        runs: dict[str, dict[str, Any]] = {}
        after: str | None = None  # the latest expected start read so far
        at_after: list[str] = []  # the runs read with exactly that expected start
        offset = 0  # only when a run comes without an expected start (not seen on 3.8 servers)
        for _ in range(max_pages):
            page = dict(flow_runs)
            if after is not None:
                page["expected_start_time"] = {**flow_runs.get("expected_start_time", {}), "after_": after}
            left_out = [*(excluding or []), *at_after]
            if left_out:
                page["id"] = {"not_any_": left_out}
            body = {**scope, "flow_runs": page, "sort": "EXPECTED_START_TIME_ASC", "limit": page_size,
                    "offset": offset}
            batch = await self._json("POST", "/flow_runs/filter", body)
            if not isinstance(batch, list):
                raise PrefectError(health.BAD_RESPONSE, "flow_runs/filter answered an unexpected body")
            runs.update((str(r.get("id")), r) for r in batch)
            if len(batch) < page_size:
                break
            last = parse_time(batch[-1].get("expected_start_time"))
            if last is None or offset:
                # No key to page by: offset pages, overlapping so a shift cannot skip a run.
                offset += page_size - min(PAGE_OVERLAP, page_size // 2)
                continue
            same = [str(r.get("id")) for r in batch if parse_time(r.get("expected_start_time")) == last]
            at_after = [*at_after, *same] if after is not None and parse_time(after) == last else same
            after = str(batch[-1]["expected_start_time"])
        return list(runs.values())

    def write_slots(self) -> asyncio.Semaphore:
        """Hold one while sending a state write: bounds them per server or account, all policies together."""
        return self._http.write_slots(self.api_url)

    async def bulk_set_pending_runs(self, run_ids: list[str], state: dict[str, Any]) -> dict[str, str] | None:
        """Set ``state`` on those of ``run_ids`` still PENDING; None when the server lacks the endpoint.

        Returns run id -> orchestration status (ACCEPT, REJECT, ...); runs missing from
        the answer had left PENDING when the server selected them.
        """
        if len(run_ids) > BULK_LIMIT:
            raise ValueError(f"at most {BULK_LIMIT} runs per bulk call")
        body = {
            "flow_runs": {"id": {"any_": list(run_ids)}, "state": {"type": {"any_": ["PENDING"]}}},
            "state": state,
            "force": False,
            "limit": len(run_ids),
        }
        try:
            answer = await self._json("POST", "/flow_runs/bulk_set_state", body, replay=False)
        except PrefectError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        # Match on each result's own flow_run_id: state.state_details.flow_run_id is unreliable there.
        return {str(r["flow_run_id"]): str(r["status"]) for r in answer.get("results") or []}

    async def set_pending_run(self, run_id: str, state: dict[str, Any]) -> str | None:
        """Fallback for servers without bulk_set_state: re-read, then set the state if still PENDING.

        Returns the orchestration status, or None when the run had left PENDING.
        """
        run = await self._json("GET", f"/flow_runs/{quote_segment(run_id)}")
        if ((run.get("state") or {}).get("type")) != "PENDING":
            return None
        answer = await self._json("POST", f"/flow_runs/{quote_segment(run_id)}/set_state",
                                  {"state": state, "force": False}, replay=False)
        return str(answer.get("status"))
