"""Reads issued together: if one fails, the others are cancelled and awaited.

``asyncio.gather`` leaves the siblings of a failed read running; they keep holding
connection slots until their own timeouts, under exactly the load that made the first
one fail. A TaskGroup cancels them and waits for them to finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


async def gather_or_cancel(*reads: Awaitable[Any]) -> list[Any]:
    """Every result in order; the first failure is raised (not an ExceptionGroup) once
    the other reads are cancelled and done."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(read)) for read in reads]
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def _awaited(read: Awaitable[Any]) -> Any:
    return await read
