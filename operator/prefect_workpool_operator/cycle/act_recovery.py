"""Stale-run recovery's writes for one policy and cycle: the plan's batches (``core.recovery_plan``).

``bulk_set_state`` with a PENDING guard, ≤50 runs per call, WRITE_CONCURRENCY calls at
once per Prefect server (every policy together), one group per reason so each run's state
message tells its own, never sent twice after an answer that may have been lost; servers
without it get re-read + ``set_state`` per run. Never ``force``. The reads are ``recovery``'s.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect_workpool_operator.core import stale
from prefect_workpool_operator.core.plan import StaleReading
from prefect_workpool_operator.core.recovery_plan import Batch, WriteOutcome
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.http import WRITE_CONCURRENCY  # noqa: F401  (the bound, per server: prefect_http)


async def write_batches(
    client: PrefectClient, batches: tuple[Batch, ...], reading: StaleReading, memory: RecoveryMemory, now: datetime
) -> WriteOutcome:
    """The plan's guarded batches, at most WRITE_CONCURRENCY in flight to the server with every
    other policy's writes. Requeues that went through are remembered even when another batch
    failed; then the failure is raised."""
    slots = client.write_slots()

    async def bounded(batch: Batch) -> _ApplyResult:
        async with slots:
            return await _apply(client, list(batch.run_ids), batch.state)

    results = await asyncio.gather(*(bounded(batch) for batch in batches), return_exceptions=True)
    outcome = WriteOutcome()
    for batch, result in zip(batches, results):
        if not isinstance(result, BaseException):
            outcome.add(batch.action, result.accepted, result.moved_on, result.failed, result.writes)
    requeues_before = {r.id: r.requeues for r in reading.runs}
    requeued = outcome.changed.get(stale.RESCHEDULE, [])
    for run_id in requeued:
        memory.requeues.record(run_id, requeues_before.get(run_id, 0) + 1, now)
    if memory.total_requeued is not None:
        memory.total_requeued += len(requeued)
    error = next((r for r in results if isinstance(r, BaseException)), None)
    if error is not None:
        raise error  # after recording the batches that did go through
    return outcome


@dataclass
class _ApplyResult:
    accepted: list[str]
    moved_on: int
    failed: int
    writes: int


async def _apply(client: PrefectClient, batch: list[str], state: dict[str, Any]) -> _ApplyResult:
    """One guarded batch (≤ core.recovery_plan.WRITE_BATCH runs): only runs still PENDING change, never forced."""
    accepted: list[str] = []
    moved_on = failed = writes = 0
    results = None if client.bulk_unsupported else await client.bulk_set_pending_runs(batch, state)
    if results is not None:
        writes += 1
        accepted += [i for i in batch if results.get(i) == "ACCEPT"]
        moved_on += sum(1 for i in batch if i not in results)
        failed += sum(1 for i in batch if i in results and results[i] != "ACCEPT")
    else:
        client.bulk_unsupported = True  # an older server or a Cloud plan without it: per run from now on
        for run_id in batch:
            status = await client.set_pending_run(run_id, state)
            if status is None:
                moved_on += 1
                continue
            writes += 1
            if status == "ACCEPT":
                accepted.append(run_id)
            else:
                failed += 1
    return _ApplyResult(accepted, moved_on, failed, writes)
