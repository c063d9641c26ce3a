"""The MQTT adapter: the facade over paho that the app sees.

It connects (`session`), subscribes (`subscriptions`, `share_probe`), routes what arrives
(`router`: feature routes, else commands), gates acknowledgements (`inbound`) and publishes
(`outbound`). paho callbacks only decode and hand over; none blocks or raises. `on_listening(True)`
is said only once the command subscription is granted (and a shared group is verified): a bridge
that cannot hear commands does not claim to be there. What is published about it is
features/availability.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import MqttConfig
from bridge.core import topics
from bridge.core.messages import Command, Route
from bridge.core.redact import redact
from bridge.infra.tls import mqtt_context
from bridge.mqtt.diagnostics import RefusedPublishes, shown
from bridge.mqtt.inbound import InboundGate
from bridge.mqtt.loop import Client, LoopDriver
from bridge.mqtt.outbound import PAHO_WINDOW, PublishQueue
from bridge.mqtt.responses import StateOut
from bridge.mqtt.router import Router, empty_device, live_command
from bridge.mqtt.session import Session
from bridge.mqtt.share_probe import ShareProbe
from bridge.mqtt.subscriptions import Subscriptions

log = logging.getLogger("bridge.mqtt")

# What an MQTT 5 broker may deliver to us beyond a payload: the fixed header, the topic and the
# properties (a Response Topic, Correlation Data).
PACKET_OVERHEAD = 16_384
# The smallest Maximum Packet Size we announce: every command up to 1 MiB reaches us to be answered
# invalid_payload, and so do our own retained messages (settings, discovery) when read back.
MIN_PACKET_PAYLOAD = 4 * 1024 * 1024

Held = Command | Callable[[], None]


class MqttAdapter:
    """Connects, subscribes, turns messages into `Command`s and publishes states."""

    def __init__(
        self,
        config: MqttConfig,
        on_command: Callable[[Command], None],
        *,
        routes: Sequence[Route] = (),
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        on_listening: Callable[[bool], None] | None = None,
        will: tuple[str, bytes] | None = None,
        on_retained_command: Callable[[str, bytes], None] | None = None,
        before_ack: Callable[[], bool] | None = None,
        max_payload_bytes: int | None = None,
        owned_prefixes: Sequence[str] = (),
    ) -> None:
        self._config = config
        self._base = config.base_topic
        self._on_command = on_command
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_listening = on_listening
        self._will = will
        self._on_retained_command = on_retained_command
        self._routes = routes  # read at run(): features register theirs before the bridge starts
        self._router = Router(())
        self._problems: dict[str, str] = {}  # why we cannot do the job while connected (for /healthz)
        self._intake = True
        self.listening = False  # the command subscription is granted on this connection
        self.client = self._make_client()
        max_packet = None if max_payload_bytes is None else max(max_payload_bytes, MIN_PACKET_PAYLOAD) + PACKET_OVERHEAD
        self.session = Session(self.client, config, max_packet)
        self.outbound = PublishQueue(self.client, config.qos)
        states = StateOut(self.outbound, self._base, config.response_topics, (self._base, *owned_prefixes),
                          v5=lambda: self.session.v5)
        # Publishing is the queue's (outbound.py) and the state policy's (responses.py); never raises.
        self.publish = self.outbound.publish
        self.publish_state = states.publish_state
        self.inbound: InboundGate[Held] = InboundGate(
            ack=self.client.ack, pressing=lambda: self.outbound.pressing, deliver=self._deliver,
            call_soon=self._call_soon, before_ack=before_ack)
        self.subscriptions = Subscriptions(self.client, config, topics.set_filter(self._base, config.shared_group),
                                           self._problems, v5=lambda: self.session.v5, current=self.session.current)
        self._probe = ShareProbe(self.client, self._base, config.shared_group, self._problems,
                                 on_ok=lambda: self._listening(True), on_deaf=lambda: self._listening(False),
                                 current=self.session.current)
        self._refused = RefusedPublishes()
        self._driver = LoopDriver(self.client, before_read=self.session.peer_is_mqtt, tick=self._tick)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _make_client(self) -> Client:
        cfg = self._config
        v5 = cfg.protocol != "3.1.1"
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else not cfg.persistent_session,
            reconnect_on_failure=False,
            manual_ack=True,  # a command is acknowledged only after the journal holds it (inbound.py)
        )
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password else None
            if password:
                redact.add(password)
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set_context(mqtt_context(cfg))
        client.connect_timeout = cfg.connect_timeout
        if self._will is not None:
            client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        client.max_queued_messages_set(0)  # unbounded while offline: states must survive a broker restart
        client.max_inflight_messages_set(PAHO_WINDOW)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        return client

    def _call_soon(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon(fn)

    # --- what the app reads -------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Connected to the broker now."""
        return self.session.connected

    @property
    def connect_count(self) -> int:
        """Connections accepted so far."""
        return self.session.connect_count

    @property
    def waiting_publishes(self) -> int:
        """Messages the broker has not acknowledged yet, or that wait for room to be sent."""
        return self.outbound.waiting

    @property
    def held_commands(self) -> int:
        """Commands received under back-pressure, not run and not acknowledged yet."""
        return self.inbound.held

    def health(self) -> list[str]:
        """Why the bridge cannot take commands right now (empty when it can)."""
        if not self.connected:
            return [self.session.last_error or f"not connected to the broker {self._config.host}:{self._config.port}"]
        problems = list(self._problems.values())
        if not problems and self._intake and not self.listening:
            problems.append("waiting for the broker to grant the command subscription")
        return problems

    def resume_acks(self) -> None:
        """Acknowledge the commands held back (the journal is writable again, or the queue drained)."""
        self.inbound.flush()

    # --- paho callbacks (never block, never raise) ----------------------------------

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if not self.session.connack(flags, reason):
            return
        self.listening = False
        self.subscriptions.reset()
        if self._intake:
            self.subscriptions.commands()
        for topic in self._router.subscriptions():
            self.subscriptions.subscribe(topic, 1)
        for topic in self._router.unsubscriptions():
            self.client.unsubscribe(topic)
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                log.exception("on_connected hook failed")

    def _handle_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        granted = self.subscriptions.suback(mid, reasons, self.connect_count, self._resubscribe)
        if granted != self.subscriptions.command_filter:
            return
        self.listening = True
        if not self._probe.checked:
            self._probe.start(self.connect_count)  # listening once the probe came through
        else:
            self._listening(True)  # a bridge that cannot hear commands must not look available

    def _resubscribe(self, topic: str) -> None:
        if topic != self.subscriptions.command_filter:
            self.subscriptions.subscribe(topic, 1)
        elif self._intake:
            self.subscriptions.commands()

    def _listening(self, yes: bool) -> None:
        self.listening = yes
        if self._on_listening is not None:
            try:
                self._on_listening(yes)
            except Exception:
                log.exception("on_listening hook failed")

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self.session.dropped(flags, reason)
        self.listening = False
        self.subscriptions.reset()
        self._probe.connection_lost()
        # The broker redelivers unacknowledged commands (DUP) on our persistent session and the
        # service recognises the ones it already runs.
        self.inbound.connection_lost()
        if self._on_disconnected is not None:
            try:
                self._on_disconnected()
            except Exception:
                log.exception("on_disconnected hook failed")
        self.session.disconnected.set()

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        arrival = self.inbound.arrived(message.mid, message.qos)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("ignored a message whose topic is not UTF-8")
            return
        if self._probe.consumed(topic, None):
            return
        try:
            self._route(message, topic, arrival)
        except Exception:
            log.exception("failed to hand over a message on %s", shown(topic))

    def _route(self, message: paho.MQTTMessage, topic: str, arrival: int) -> None:
        route = self._router.match(topic)
        if route is not None:
            payload, retained = bytes(message.payload), bool(message.retain)
            if route.ordered:
                self.inbound.offer(message.qos, arrival, lambda: route.handler(topic, payload, retained),
                                   ordered=True)
            else:
                route.handler(topic, payload, retained)
            return
        device = topics.device_of(topic, self._base)
        if device is None:
            if empty_device(topic, self._base):
                log.warning("ignored a command on %s: the device id is empty", topic)
            return
        if self._probe.consumed(topic, device):
            return
        command = live_command(message, topic, device, self._on_retained_command)
        if command is not None:
            self.inbound.offer(message.qos, arrival, command)

    def _deliver(self, item: Held) -> None:
        try:
            if isinstance(item, Command):
                self._on_command(item)
            else:
                item()
        except Exception:
            device = item.device if isinstance(item, Command) else None
            log.exception("failed to hand over a command", extra={"device": device})

    def _handle_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._refused.note(self.client.topic_of(mid), reason)
        self.outbound.acked(mid)
        self.inbound.room()

    def _tick(self) -> None:
        self.outbound.tick()
        self.inbound.tick()

    # --- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        """Connect and stay connected until `close()`; reconnect with backoff."""
        self._loop = self._driver.attach()
        self._router = Router(self._routes)
        await self.session.run()

    def stop_intake(self) -> None:
        """Stop subscribing on reconnects.

        Alone, the subscription stays: it is what makes the broker queue commands for our
        persistent session while we are down. In a shared group we leave it, so the broker
        gives the group's commands to the members that stay up.
        """
        self._intake = False
        if self._config.shared_group and self.connected:
            self.client.unsubscribe(self.subscriptions.command_filter)

    async def close(self, grace: float = 5.0) -> None:
        """Wait up to `grace` seconds for outstanding acknowledgements (the features' last words), disconnect."""
        self.inbound.flush(closing=True)
        if self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbound.all_acked(), grace)
        self.session.stopping = True
        if self.connected:
            self.session.disconnected.clear()
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.session.disconnected.wait(), grace)
        else:
            self.session.disconnected.set()
        self._driver.stop()
