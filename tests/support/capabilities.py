"""What a broker actually does, measured with plain MQTT clients (no bridge involved).

The README's "Brokers" table is checked against these measurements, so it says
what the installed brokers do, not what their documentation promises.
"""

from __future__ import annotations

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

from tests.support.brokers import MatrixBroker

# How long a message that should come is waited for (generous: two busy cores, a broker just
# restarted), and how long one that should not come, once a later message proved the way is clear.
ARRIVE_TIMEOUT = 15.0
ABSENT_TIMEOUT = 1.0
RETAINED_LATE_TIMEOUT = 5.0


@dataclass
class Capabilities:
    """One broker's measured behaviour; None where not measured (yet)."""

    mqtt5: bool | None = None
    shared_subscriptions: bool | None = None
    keeps_sessions: bool | None = None
    keeps_sessions_across_restart: bool | None = None
    retained_to_wildcards: bool | None = None

    def as_row(self) -> dict[str, bool | None]:
        """The README table's columns, by name."""
        return {
            "MQTT 5": self.mqtt5,
            "$share": self.shared_subscriptions,
            "keeps sessions": self.keeps_sessions,
            "keeps sessions across restart": self.keeps_sessions_across_restart,
            "retained to wildcards": self.retained_to_wildcards,
        }


class Client:
    """A bare paho client that records what arrives; persistent sessions when asked."""

    def __init__(self, port: int, *, v5: bool, client_id: str | None = None, persistent: bool = False) -> None:
        self.port = port
        self.v5 = v5
        self.persistent = persistent
        self.client_id = client_id or f"cap-{uuid.uuid4().hex[:10]}"
        self.messages: list[tuple[str, bytes, bool]] = []
        self.suback: list[int] = []
        self.session_present = False
        self._cond = threading.Condition()
        self.client = self._make()

    def _make(self) -> paho.Client:
        if self.v5:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=MQTTProtocolVersion.MQTTv5)
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=MQTTProtocolVersion.MQTTv311, clean_session=not self.persistent)
        client.on_message = self._on_message
        return client

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def connect(self) -> bool:
        """Connect and wait for the CONNACK; False when refused or dropped."""
        done = threading.Event()
        result: list[bool] = []

        def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            result.append(not reason.is_failure)
            self.session_present = bool(flags.session_present)
            done.set()

        def on_disconnect(*args: Any) -> None:
            result.append(False)
            done.set()

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        kwargs: dict[str, Any] = {}
        if self.v5:
            kwargs["clean_start"] = not self.persistent
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 3600
                kwargs["properties"] = props
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30, **kwargs)
        except OSError:
            return False
        self.client.loop_start()
        ok = done.wait(ARRIVE_TIMEOUT) and result[0]
        self.client.on_disconnect = None
        if not ok:
            self.close()
        return ok

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the granted QoS or reason code from the SUBACK."""
        done = threading.Event()

        def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
            self.suback.extend(int(getattr(r, "value", r)) for r in reasons)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        if not done.wait(ARRIVE_TIMEOUT):
            raise TimeoutError(f"no SUBACK for {topic}")
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(ARRIVE_TIMEOUT)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic}")

    def wait(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float) -> bool:
        """Wait until the received messages satisfy `predicate`; False at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker)."""
        self.client.disconnect()
        self.client.loop_stop()


def speaks_mqtt5(broker: MatrixBroker) -> bool:
    """Whether the broker accepts an MQTT 5 CONNECT."""
    client = Client(broker.port, v5=True)
    if not client.connect():
        return False
    client.close()
    return True


@dataclass(frozen=True)
class OfflineSession:
    """A persistent session left on the broker with one QoS 1 message queued for it."""

    client_id: str
    topic: str
    v5: bool


def measure(broker: MatrixBroker, *, restart: bool = True) -> Capabilities:
    """Everything in `Capabilities`; `restart=False` leaves out the one that restarts the broker."""
    caps = Capabilities(mqtt5=speaks_mqtt5(broker))
    v5 = bool(caps.mqtt5)
    base = f"cap{uuid.uuid4().hex[:8]}"
    # Sessions are left first and messages queued for them only after the other probes: a message
    # published right after the DISCONNECT may still go to the closing connection, and a broker
    # redelivers that one only after its ack timeout.
    offline = [_leave_session(broker, f"{base}/{kind}", v5) for kind in ("s", "r")]
    publisher = Client(broker.port, v5=v5)
    assert publisher.connect(), f"{broker!r}: a plain client cannot connect"
    try:
        caps.shared_subscriptions = _shared(broker, publisher, base, v5)
        caps.retained_to_wildcards = _retained_wildcard(broker, publisher, base, v5)
        for session in offline:
            publisher.publish(session.topic, b"queued")
    finally:
        publisher.close()
    caps.keeps_sessions = _still_queued(broker, offline[0])
    OFFLINE_FOR_RESTART[broker.port] = offline[1]
    if restart:
        caps.keeps_sessions_across_restart = keeps_sessions_across_restart(broker)
    return caps


# Per broker port: the session `keeps_sessions_across_restart` looks for after restarting the broker.
OFFLINE_FOR_RESTART: dict[int, OfflineSession] = {}


def keeps_sessions_across_restart(broker: MatrixBroker) -> bool:
    """Whether the QoS 1 message `measure` queued for an offline session survives a broker restart."""
    session = OFFLINE_FOR_RESTART.pop(broker.port)
    broker.restart()
    return _still_queued(broker, session)


def _leave_session(broker: MatrixBroker, topic: str, v5: bool) -> OfflineSession:
    client = Client(broker.port, v5=v5, client_id=f"cap-session-{uuid.uuid4().hex[:8]}", persistent=True)
    assert client.connect()
    client.subscribe(topic)
    client.close()
    return OfflineSession(client.client_id, topic, v5)


def _still_queued(broker: MatrixBroker, session: OfflineSession) -> bool:
    again = Client(broker.port, v5=session.v5, client_id=session.client_id, persistent=True)
    assert again.connect(), f"{broker!r}: could not reconnect"
    try:
        # The broker says in its CONNACK whether it still had the session.
        return again.session_present and again.wait(lambda ms: any(p == b"queued" for _, p, _ in ms), ARRIVE_TIMEOUT)
    finally:
        again.close()


def _shared(broker: MatrixBroker, publisher: Client, base: str, v5: bool) -> bool:
    # Two members of one group: a broker that honours $share hands each message to one of them.
    # A plain subscriber is the witness that the broker has routed all ten.
    members = [Client(broker.port, v5=v5) for _ in range(2)]
    witness = Client(broker.port, v5=v5)
    try:
        for member in members:
            assert member.connect()
            member.subscribe(f"$share/g/{base}/shared/#")
        assert witness.connect()
        witness.subscribe(f"{base}/shared/#")
        for i in range(10):
            publisher.publish(f"{base}/shared/{i}", b"x")

        def total() -> int:
            return sum(len(m.messages) for m in members)

        assert witness.wait(lambda ms: len(ms) >= 10, ARRIVE_TIMEOUT), "a plain subscription got nothing"
        if not members[0].wait(lambda _: total() > 0, ABSENT_TIMEOUT):
            return False  # $share/g/... taken as a plain filter that matches none of these topics
        # Slow deliveries to the group, then second copies (a group that gives every member a copy).
        members[0].wait(lambda _: total() >= 10, ARRIVE_TIMEOUT)
        members[0].wait(lambda _: total() > 10, ABSENT_TIMEOUT)
        return total() == 10
    finally:
        for member in [*members, witness]:
            member.close()


def _retained_wildcard(broker: MatrixBroker, publisher: Client, base: str, v5: bool) -> bool:
    publisher.publish(f"{base}/dev-1/state", b"kept", retain=True)
    subscriber = Client(broker.port, v5=v5)
    assert subscriber.connect()
    try:
        subscriber.subscribe(f"{base}/+/state")
        # Brokers send retained messages at SUBSCRIBE time, so usually before a later live one; some
        # look them up on the side (NATS, in JetStream): a few seconds more for those.
        publisher.publish(f"{base}/dev-2/state", b"live")
        assert subscriber.wait(lambda ms: any(p == b"live" for _, p, _ in ms), ARRIVE_TIMEOUT)
        return subscriber.wait(lambda ms: any(p == b"kept" for _, p, _ in ms), RETAINED_LATE_TIMEOUT)
    finally:
        subscriber.close()
        publisher.publish(f"{base}/dev-1/state", b"", retain=True)
