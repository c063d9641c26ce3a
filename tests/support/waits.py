"""Waiting for a condition with a deadline: the one polling loop the tests and checks share.

Each waits until `condition()` is true and raises TimeoutError naming `what` (which may be a
function, to describe the state at the time of the failure) when the deadline passes first.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

What = str | Callable[[], str]


def _timed_out(what: What, timeout: float) -> TimeoutError:
    return TimeoutError(f"{what() if callable(what) else what}: not true after {timeout:g}s")


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, what: What = "condition", *,
               interval: float = 0.05) -> None:
    """Poll `condition` from this thread every `interval` seconds until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout)
        time.sleep(interval)  # ok: polling with a deadline


async def wait_until_async(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 10.0,
                           what: What = "condition", *, interval: float = 0.02) -> None:
    """Poll `condition` (plain or async) while the event loop keeps running, until it holds."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise _timed_out(what, seconds)
        await asyncio.sleep(interval)  # ok: polling with a deadline
