"""Running a test's coroutine: on a fresh event loop, with a deadline, and letting ready tasks run."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """One test coroutine on a fresh loop; a hang becomes a failure, not a stuck run."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def settle() -> None:
    """Let every ready task run until nothing moves."""
    for _ in range(20):
        await asyncio.sleep(0)
