"""Fakes for CaptureService's two sides, and the builders the service tests share.

`FakeCloud.capture` waits for its call's gate (unless `auto`), so a test decides when the cloud
answers; `FakePublisher` records every state the service publishes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.core.messages import Command
from bridge.core.reply import DeviceReply, InstructionReply
from bridge.service.capture import CaptureService

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
GUID2 = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"
GUID3 = "5c1d7a40-2b7e-4c9f-8d3a-1e2f3a4b5c6d"
DEVICES = {"truck-12": GUID, "van-3": GUID2, "car-7": GUID3}


def ok_reply(file_id: str = "file-1") -> InstructionReply:
    text = f"(804250900200,1,001,CAMERA,9,4,0,{file_id})"
    return InstructionReply("ins send ok", "804250900200", text, DeviceReply(0, "804250900200", file_id))


@dataclass
class Call:
    guid: str
    params: dict[str, Any]
    gate: asyncio.Event
    outcome: InstructionReply | BaseException
    finished: bool = False

    def release(self, outcome: InstructionReply | BaseException | None = None) -> None:
        if outcome is not None:
            self.outcome = outcome
        self.gate.set()


@dataclass
class FakeCloud:
    """`capture` waits for its call's gate (unless auto), then returns or raises the call's outcome."""

    auto: bool = False
    outcome: Callable[[int], InstructionReply | BaseException] = lambda n: ok_reply(f"file-{n}")
    calls: list[Call] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    async def capture(self, guid: str, params: dict[str, Any]) -> InstructionReply:
        call = Call(guid, params, asyncio.Event(), self.outcome(len(self.calls) + 1))
        self.calls.append(call)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if not self.auto:
                await call.gate.wait()
        finally:
            self.active -= 1
            call.finished = True
        if isinstance(call.outcome, BaseException):
            raise call.outcome
        return call.outcome


@dataclass
class Published:
    device: str
    payload: bytes
    retain: bool
    response_topic: str | None
    correlation: bytes | None
    on_acked: Callable[[], None] | None

    @property
    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.payload)
        return result


@dataclass
class FakePublisher:
    """Records publish_state calls; `hook` runs at publish time (to look at the journal then)."""

    published: list[Published] = field(default_factory=list)
    hook: Callable[[Published], None] | None = None

    def publish_state(
        self,
        device: str,
        payload: bytes,
        *,
        retain: bool = True,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        on_acked: Callable[[], None] | None = None,
    ) -> None:
        item = Published(device, payload, retain, response_topic, correlation, on_acked)
        self.published.append(item)
        if self.hook is not None:
            self.hook(item)

    def states(self, device: str | None = None) -> list[dict[str, Any]]:
        return [p.state for p in self.published if device is None or p.device == device]

    def finals(self, device: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.states(device) if s["status"] != "pending"]

    def ack_all(self) -> None:
        for p in self.published:
            if p.on_acked is not None:
                p.on_acked()


def service(cloud: FakeCloud, publisher: FakePublisher, **options: Any) -> CaptureService:
    options.setdefault("devices", DEVICES)
    return CaptureService(cloud, publisher, **options)


def cmd(device: str = "truck-12", payload: bytes | dict[str, Any] = b"{}", **extra: Any) -> Command:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Command(device, raw, **extra)
