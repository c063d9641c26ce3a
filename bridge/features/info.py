"""`<base>/bridge/info` (retained): version, captures in flight and waiting; published when it changes.

Every instance on a base topic writes `<base>/bridge/info` (the last one wins); each also keeps
its own at `<base>/bridge/instance/<client_id>/info`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Protocol

from bridge import __version__
from bridge.config import Config
from bridge.core import topics
from bridge.features.base import Bus, Feature, Publish

# How often captures in flight and backlog are published (when changed).
INFO_INTERVAL = 5.0


class Load(Protocol):
    """What the service says about its work."""

    @property
    def in_flight(self) -> int: ...

    @property
    def backlog(self) -> int: ...


class Connection(Protocol):
    """Whether the broker can be told anything now."""

    @property
    def connected(self) -> bool: ...


def info_payload(in_flight: int, backlog: int) -> bytes:
    """`<base>/bridge/info`: version, captures in flight and waiting."""
    return json.dumps(
        {"version": __version__, "in_flight": in_flight, "backlog": backlog}, separators=(",", ":")
    ).encode()


class BridgeInfo(Feature):
    """Publishes the info at every connection and every INFO_INTERVAL when it changed."""

    def __init__(self, config: Config, publish: Publish, load: Load, connection: Connection) -> None:
        self._topic = topics.bridge_info_topic(config.mqtt.base_topic)
        self._own = topics.instance_info_topic(config.mqtt.base_topic, config.mqtt.client_id)
        self._send = publish
        self._load = load
        self._connection = connection
        self._last: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, bus: Bus) -> None:
        bus.on_connected(lambda: self.publish_info(self._load.in_flight, self._load.backlog, force=True))

    def publish_info(self, in_flight: int, backlog: int, *, force: bool = False) -> None:
        """Retained `<base>/bridge/info`, only when something changed (or `force`)."""
        payload = info_payload(in_flight, backlog)
        if force or payload != self._last:
            self._last = payload
            self._send(self._topic, payload, qos=1, retain=True)
            self._send(self._own, payload, qos=1, retain=True)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._now_and_then())

    async def _now_and_then(self) -> None:
        while True:
            await asyncio.sleep(INFO_INTERVAL)
            if self._connection.connected:
                self.publish_info(self._load.in_flight, self._load.backlog)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
