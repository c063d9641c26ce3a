"""The publish queue, against a fake paho: its window, the overflow in order, acknowledgement hooks."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import paho.mqtt.client as paho

from bridge.mqtt.outbound import PAHO_WINDOW, PublishQueue


@dataclass
class Info:
    rc: int
    mid: int


class FakePaho:
    def __init__(self, limit: int = 10**9) -> None:
        self.sent: list[str] = []
        self.inflight: list[int] = []
        self.limit = limit
        self._mid = 0

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties: object = None
    ) -> Info:
        if len(self.inflight) >= self.limit:
            return Info(paho.MQTT_ERR_QUEUE_SIZE, 0)
        self._mid += 1
        self.sent.append(topic)
        self.inflight.append(self._mid)
        return Info(paho.MQTT_ERR_SUCCESS, self._mid)

    def queued(self) -> int:
        return len(self.inflight)


def test_beyond_the_window_messages_wait_and_go_out_in_order_as_acks_come() -> None:
    async def go() -> None:
        fake = FakePaho()
        queue = PublishQueue(fake, 1)  # type: ignore[arg-type]
        acked: list[int] = []
        total = PAHO_WINDOW + 5
        for i in range(total):
            assert queue.publish(f"t/{i}", b"x", on_acked=functools.partial(acked.append, i))
        assert len(fake.sent) == PAHO_WINDOW
        assert queue.waiting == total
        for _ in range(total):
            mid = fake.inflight[0]
            queue.acked(mid)
            fake.inflight.pop(0)  # paho drops it after on_publish
        assert fake.sent == [f"t/{i}" for i in range(total)]
        assert acked == list(range(total))
        await asyncio.wait_for(queue.all_acked(), 1)

    asyncio.run(go())


def test_a_refusal_by_paho_keeps_the_message_for_the_next_tick() -> None:
    async def go() -> None:
        fake = FakePaho(limit=1)
        queue = PublishQueue(fake, 1)  # type: ignore[arg-type]
        queue.publish("a", b"")
        queue.publish("b", b"")
        assert fake.sent == ["a"]
        fake.inflight.clear()
        queue.tick()
        assert fake.sent == ["a", "b"]

    asyncio.run(go())


def test_bulk_messages_do_not_count_toward_back_pressure() -> None:
    async def go() -> None:
        fake = FakePaho()
        queue = PublishQueue(fake, 1)  # type: ignore[arg-type]
        for i in range(3):
            queue.publish(f"ha/{i}", b"", bulk=True)
        queue.publish("state", b"")
        assert queue.waiting == 4
        assert queue.pressing == 1
        for mid in list(fake.inflight):
            queue.acked(mid)
        fake.inflight.clear()
        assert queue.pressing == 0

    asyncio.run(go())


def test_a_topic_paho_would_refuse_is_refused_before_queueing() -> None:
    async def go() -> None:
        queue = PublishQueue(FakePaho(), 1)  # type: ignore[arg-type]
        assert not queue.publish("a/+/b", b"")
        assert not queue.publish("", b"")

    asyncio.run(go())
