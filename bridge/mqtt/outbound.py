"""The outbound publish queue: paho's in-flight window, our overflow behind it, acknowledgement hooks.

States are never dropped: what paho cannot take yet waits here, in order, and is sent as the
broker acknowledges earlier messages (or at the next `tick`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties

from bridge.mqtt.diagnostics import shown, unpublishable

log = logging.getLogger("bridge.mqtt")

# Messages handed to paho at once, at most (its in-flight window): the rest wait in our own queue
# as one small tuple each, not as paho's message + info + lock + condition (~3 KB); see
# docs/performance.md (the flood measurements).
PAHO_WINDOW = 1000
# paho also answers MQTT_ERR_QUEUE_SIZE when the message id it drew is still in use by an older
# message (ids wrap at 65,535); the next id is free, so such a refusal is retried at once.
ID_RETRIES = 8


class PahoPublisher(Protocol):
    """What the queue needs of paho's client (a fake in unit tests)."""

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, properties: Properties | None = None
    ) -> paho.MQTTMessageInfo: ...

    def queued(self) -> int: ...


class Queued(NamedTuple):
    """A publish paho could not take yet (its queue was full); sent as acknowledgements free room."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    on_acked: Callable[[], None] | None


class PublishQueue:
    """Publishes through paho within its window; the overflow waits here, in order."""

    def __init__(self, client: PahoPublisher, default_qos: int) -> None:
        self._client = client
        self._default_qos = default_qos
        self._overflow: deque[Queued] = deque()
        self._acks: dict[int, Callable[[], None]] = {}
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._bulk = 0  # waiting messages that bound themselves (do not count toward back-pressure)

    @property
    def waiting(self) -> int:
        """Messages the broker has not acknowledged yet, or that wait for room to be sent."""
        return self._client.queued() + len(self._overflow)

    @property
    def pressing(self) -> int:
        """Waiting messages that count toward back-pressure (all but `bulk` ones)."""
        return self.waiting - self._bulk

    async def all_acked(self) -> None:
        """Until nothing waits for an acknowledgement."""
        await self._all_acked.wait()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int | None = None,
        retain: bool = False,
        properties: Properties | None = None,
        on_acked: Callable[[], None] | None = None,
        bulk: bool = False,
    ) -> bool:
        """Queue one message; False (after a WARNING) when the topic cannot be published at all.

        Checked before a message is queued, not only when paho gets it: by then the caller has
        been told it was sent. A `bulk` message (a sender that bounds itself, like a discovery
        announcement) does not count toward back-pressure.
        """
        refused = unpublishable(topic)
        if refused is not None:
            log.warning("cannot publish to %s: %s", shown(topic), refused)
            return False
        if bulk:
            self._bulk += 1
            on_acked = self._bulk_acked(on_acked)
        item = Queued(topic, payload, self._default_qos if qos is None else qos, retain, properties, on_acked)
        if self._overflow or self._client.queued() >= PAHO_WINDOW:
            self._wait(item)  # behind what already waits, in order
            return True
        info = self._paho_publish(item)
        if info is None:
            if bulk:
                self._bulk -= 1
            return False
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._wait(item)
            return True
        self._track(info, item)
        return True

    def _wait(self, item: Queued) -> None:
        self._overflow.append(item)
        self._all_acked.clear()

    def _bulk_acked(self, then: Callable[[], None] | None) -> Callable[[], None]:
        def acked() -> None:
            self._bulk = max(0, self._bulk - 1)
            if then is not None:
                then()

        return acked

    def _paho_publish(self, item: Queued) -> paho.MQTTMessageInfo | None:
        try:
            for _ in range(ID_RETRIES):
                info = self._client.publish(
                    item.topic, item.payload, qos=item.qos, retain=item.retain, properties=item.properties
                )
                if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
                    break
            return info
        except ValueError as exc:  # UnicodeEncodeError is one too
            log.warning("cannot publish to %s: %s", shown(item.topic), exc)
            return None

    def _track(self, info: paho.MQTTMessageInfo, item: Queued) -> None:
        if item.on_acked is None:
            return
        if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) and item.qos:
            self._acks[info.mid] = item.on_acked
            self._all_acked.clear()
        elif info.rc == paho.MQTT_ERR_SUCCESS:
            item.on_acked()

    def acked(self, mid: int) -> None:
        """paho's on_publish: the broker has message `mid`; room for the overflow, hooks run."""
        callback = self._acks.pop(mid, None)
        if self._overflow:
            self._send_overflow(acked=1)  # paho drops this message from its queue after this callback
        if not self._acks and not self._overflow:
            self._acks = {}  # a dict keeps the table of its largest size; this one was a flood's
            self._all_acked.set()
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("publish acknowledgement hook failed")

    def tick(self) -> None:
        """Once a second: retry the overflow even when no acknowledgement comes to trigger it."""
        if self._overflow:
            self._send_overflow()

    def _send_overflow(self, acked: int = 0) -> None:
        while self._overflow and self._client.queued() - acked < PAHO_WINDOW:
            item = self._overflow[0]
            info = self._paho_publish(item)
            if info is not None and info.rc == paho.MQTT_ERR_QUEUE_SIZE:
                return
            self._overflow.popleft()
            if info is not None:
                self._track(info, item)
            elif item.on_acked is not None:
                item.on_acked()  # refused after all (checked in publish()): never hang on it
        if not self._acks and not self._overflow:
            self._all_acked.set()
