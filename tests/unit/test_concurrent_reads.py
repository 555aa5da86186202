"""Reads issued together: a failure cancels and awaits the others (asyncio.gather would leave them running)."""

from __future__ import annotations

import asyncio

import pytest

from prefect_workpool_operator.concurrent_reads import gather_or_cancel
from prefect_workpool_operator.core.errors import OperatorError


async def test_results_in_order() -> None:
    async def value(v: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return v

    assert await gather_or_cancel(value(1, 0.02), value(2, 0)) == [1, 2]


async def test_a_failure_cancels_and_awaits_the_siblings() -> None:
    finished: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.Event().wait()  # never set: only a cancellation ends it
        finally:
            finished.append("slow")

    async def failing() -> None:
        await asyncio.sleep(0)
        raise OperatorError("Unreachable", "connection refused")

    with pytest.raises(OperatorError) as raised:  # the failure itself, not an ExceptionGroup
        await gather_or_cancel(slow(), failing())
    assert raised.value.reason == "Unreachable"
    assert finished == ["slow"]  # cancelled and done before the failure reached the caller
