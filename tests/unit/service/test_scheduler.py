"""The scheduler alone: one job per device at a time, in order, and the in-flight limit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bridge.service.ports import NoObserver
from bridge.service.scheduler import Scheduler
from tests.support.aio import run, settle


@dataclass
class Job:
    key: str
    name: str
    gate: asyncio.Event = field(default_factory=asyncio.Event)


class Runner:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.scheduler: Scheduler[Job] = Scheduler(self.run, 2, NoObserver())

    async def run(self, job: Job) -> None:
        self.started.append(job.name)
        try:
            await job.gate.wait()
        finally:
            self.scheduler.release(job.key)

    def offer(self, job: Job) -> None:
        if self.scheduler.must_wait(job.key):
            self.scheduler.enqueue(job)
        else:
            self.scheduler.start(job)


def test_one_job_per_device_in_order_and_at_most_two_at_once() -> None:
    async def go() -> None:
        r = Runner()
        jobs = [Job("a", "a1"), Job("a", "a2"), Job("b", "b1"), Job("c", "c1")]
        for job in jobs:
            r.offer(job)
        await settle()
        assert r.started == ["a1", "b1"]  # a2 waits for a1, c1 for a free slot
        assert (r.scheduler.in_flight, r.scheduler.backlog) == (2, 2)
        jobs[0].gate.set()  # a1 ends: c1 waited for a slot before a2 could run, so it goes first
        await settle()
        assert r.started == ["a1", "b1", "c1"]
        jobs[2].gate.set()
        await settle()
        assert r.started == ["a1", "b1", "c1", "a2"]
        assert r.scheduler.backlog == 0

    run(go())


def test_drain_cancels_at_the_deadline_and_says_how_many_did_not_finish() -> None:
    async def go() -> None:
        r = Runner()
        for job in (Job("a", "a1"), Job("a", "a2"), Job("b", "b1")):
            r.offer(job)
        await settle()
        assert await r.scheduler.drain(0.05) == 3  # two running, one waiting
        assert (r.scheduler.in_flight, r.scheduler.backlog) == (0, 0)
        assert r.started == ["a1", "b1"]  # the waiting one never started

    run(go())
