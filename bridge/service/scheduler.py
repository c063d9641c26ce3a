"""Per-device scheduling: at most one capture in flight per device, later ones wait their turn in
order, and at most `max_in_flight` cloud calls at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from bridge.service.ports import Observer


class Keyed(Protocol):
    """A job knows its device key (the GUID in lower case, else the topic id)."""

    @property
    def key(self) -> str: ...


J = TypeVar("J", bound=Keyed)


class Scheduler(Generic[J]):
    """Runs `run(job)` as a task per job, one per key at a time."""

    def __init__(self, run: Callable[[J], Coroutine[Any, Any, None]], max_in_flight: int, observer: Observer) -> None:
        self._run = run
        self._max_in_flight = max_in_flight
        self._observer = observer
        self._waiting: dict[str, deque[J]] = {}
        self._ready: deque[str] = deque()
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancelling = False
        self.backlog = 0  # jobs waiting for their device or for a free slot

    @property
    def in_flight(self) -> int:
        """Jobs running now."""
        return len(self._active)

    def must_wait(self, key: str) -> bool:
        """A job for `key` cannot start now (its device is busy, or every slot is)."""
        return key in self._active or key in self._waiting or len(self._active) >= self._max_in_flight

    def enqueue(self, job: J) -> None:
        """Wait behind the device's earlier jobs."""
        self.backlog += 1
        queue = self._waiting.get(job.key)
        if queue is None:
            queue = self._waiting[job.key] = deque()
            if job.key not in self._active:
                self._ready.append(job.key)
        queue.append(job)

    def start(self, job: J) -> None:
        """Run it now."""
        self._active.add(job.key)
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, key: str) -> None:
        """The job for `key` ended: start what may start now."""
        self._active.discard(key)
        if key in self._waiting:
            self._ready.append(key)
        while self._ready and len(self._active) < self._max_in_flight and not self._cancelling:
            nxt = self._ready.popleft()
            queue = self._waiting[nxt]
            job = queue.popleft()
            if not queue:
                del self._waiting[nxt]
            self.backlog -= 1
            self.start(job)
        if not self._active and not self._waiting:
            self._idle.set()
        self._observer.load(len(self._active), self.backlog)

    async def drain(self, deadline: float) -> int:
        """Wait up to `deadline` seconds for what runs and waits, cancel the rest; how many did not finish."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), deadline)
        unfinished = len(self._active) + self.backlog
        self._cancelling = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()
        self._ready.clear()
        self.backlog = 0
        return unfinished
