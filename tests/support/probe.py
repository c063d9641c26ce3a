"""An MQTT client for tests: publishes commands and waits, with a deadline, for what comes back."""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Received:
    """One message as the probe saw it."""

    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


class Probe:
    """A real paho client on its own thread that records every message it gets."""

    def __init__(
        self,
        port: int,
        *,
        client_id: str | None = None,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._subscribed: set[str] = set()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda client, userdata, flags, reason, props: (
            None if reason.is_failure else self._connected.set()
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            self.client.loop_stop()
            raise TimeoutError("probe could not connect")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties))
            self._cond.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK."""
        if topic in self._subscribed:
            return
        self._subscribed.add(topic)
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        if not done.wait(10):
            raise TimeoutError(f"no SUBACK for {topic}")

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        retain: bool = False,
        qos: int = 1,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Publish and wait until the broker has it."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(10)

    def wait_for(
        self, predicate: Callable[[Received], bool], *, count: int = 1, timeout: float = 10.0
    ) -> list[Received]:
        """Wait until `count` messages match, or fail with what was seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:200]) for m in self.messages[-10:]]
                    raise TimeoutError(f"{len(found)}/{count} matching messages after {timeout}s; last seen {seen}")
                self._cond.wait(left)

    def on_topic(self, topic: str) -> list[Received]:
        """Everything received on one topic so far."""
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def final_states(self, topic: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        """Wait for `count` non-pending states on a state topic."""
        found = self.wait_for(
            lambda m: m.topic == topic and bool(m.payload) and m.json().get("status") != "pending",
            count=count,
            timeout=timeout,
        )
        return [m.json() for m in found]

    def close(self) -> None:
        """Disconnect and stop the thread."""
        self.client.disconnect()
        self.client.loop_stop()
