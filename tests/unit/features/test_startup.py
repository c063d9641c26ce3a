"""The start-up gate, against fakes: commands wait for the marker, journaled, then run in order."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import Config
from bridge.core.messages import Command
from bridge.features.base import Bus, register
from bridge.features.startup import StartupGate


class FakeService:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._next = 0

    def submit(self, command: Command, journal_id: int | None = None) -> None:
        self.events.append(("submit", (command.payload, journal_id)))

    def record(self, command: Command) -> int | None:
        self._next += 1
        self.events.append(("record", command.payload))
        return self._next

    def discard(self, journal_id: int | None) -> None:
        self.events.append(("discard", journal_id))

    def replay(self, entries: list[Any]) -> None:
        self.events.append(("replay", len(entries)))

    def in_order(self, work: Any) -> None:
        work()


def make() -> tuple[StartupGate, FakeService, Bus, list[tuple[str, bytes]]]:
    config = Config.model_validate({"cloud": {"token": "t"}})
    service, sent = FakeService(), []

    def publish(topic: str, payload: bytes, **kw: Any) -> bool:
        sent.append((topic, payload))
        return True

    bus = Bus()
    gate = StartupGate(config, service, publish, timeout=30)  # type: ignore[arg-type]
    register(bus, [gate])
    return gate, service, bus, sent


def test_commands_are_journaled_at_once_and_run_when_the_marker_is_back() -> None:
    async def go() -> None:
        gate, service, bus, sent = make()
        ready: list[bool] = []
        bus.on_ready(lambda: ready.append(True))
        bus.connected()
        [(topic, nonce)] = sent
        assert topic == "devices/bridge/sync/capture-bridge"
        bus.command(Command("truck-12", b"1"))
        bus.command(Command("truck-12", b"2"))
        assert service.events == [("record", b"1"), ("record", b"2")]
        gate.take_back([object(), object()])  # type: ignore[list-item]
        marker = bus.routes[0]
        marker.handler(marker.topic, b"sync", False)  # what another client could publish
        marker.handler(marker.topic, nonce, True)  # a retained copy is not this run's echo
        assert ready == []
        marker.handler(marker.topic, nonce, False)
        assert ready == [True]
        assert service.events[2:] == [("replay", 2), ("submit", (b"1", 1)), ("submit", (b"2", 2))]
        bus.command(Command("truck-12", b"3"))  # open: straight to the service
        assert service.events[-1] == ("submit", (b"3", None))

    asyncio.run(go())


def test_a_queued_copy_of_a_retained_command_is_dropped_while_held() -> None:
    async def go() -> None:
        gate, service, bus, _ = make()
        bus.command(Command("truck-12", b"old"))
        bus.command(Command("truck-12", b"new"))
        bus.retained_command("truck-12", b"old")
        gate.open()
        assert ("discard", 1) in service.events
        assert [e for e in service.events if e[0] == "submit"] == [("submit", (b"new", 2))]

    asyncio.run(go())


def test_stopping_hands_held_commands_to_the_service() -> None:
    async def go() -> None:
        gate, service, bus, _ = make()
        bus.command(Command("van-3", b"x"))
        gate.stop()
        assert gate.is_open
        assert service.events[-1] == ("submit", (b"x", 1))

    asyncio.run(go())


def test_a_settings_change_at_start_up_keeps_its_place_among_held_commands() -> None:
    async def go() -> None:
        gate, service, bus, _ = make()
        bus.command(Command("truck-12", b"before"))
        bus.in_order(lambda: service.events.append(("settings", None)))
        bus.command(Command("truck-12", b"after"))
        assert ("settings", None) not in service.events  # not applied before the remembered settings
        gate.open()
        order = [e for e in service.events if e[0] in ("submit", "settings")]
        assert order == [("submit", (b"before", 1)), ("settings", None), ("submit", (b"after", 2))]

    asyncio.run(go())


def test_many_held_copies_of_retained_commands_are_matched_at_once() -> None:
    async def go() -> None:
        gate, service, bus, _ = make()
        for i in range(5000):
            bus.command(Command(f"dev-{i}", b"stale"))
        for i in range(0, 5000, 2):
            bus.retained_command(f"dev-{i}", b"stale")
        gate.open()
        submitted = [e for e in service.events if e[0] == "submit"]
        assert len(submitted) == 2500
        assert len([e for e in service.events if e[0] == "discard"]) == 2500

    asyncio.run(go())


def test_only_this_runs_own_marker_counts_as_synced() -> None:
    async def go() -> None:
        gate, _, bus, sent = make()
        bus.connected()
        [(_, nonce)] = sent
        marker = bus.routes[0]
        marker.handler(marker.topic, b"forged", False)
        assert not gate.synced
        assert not gate.is_open
        marker.handler(marker.topic, nonce, False)
        assert gate.synced

        timed_out, _, _, _ = make()
        timed_out.open()  # the timeout, or stopping
        assert not timed_out.synced

    asyncio.run(go())


def test_once_open_ordered_work_goes_behind_what_the_service_parked() -> None:
    async def go() -> None:
        gate, service, bus, _ = make()
        parked: list[Any] = []
        service.in_order = parked.append  # type: ignore[method-assign,assignment]
        bus.in_order(lambda: None)
        gate.open()
        bus.in_order(lambda: None)
        assert len(parked) == 2  # held at start, then after: both handed to the service in order

    asyncio.run(go())
