"""The MQTT adapter: the only module that knows paho.

paho runs on the asyncio loop itself (its socket is watched with add_reader /
add_writer, the aiomqtt way), so a message costs no thread hand-off. Callbacks
only decode and hand over; `on_message` never blocks. Reconnects are ours:
exponential backoff, longer after the broker refuses us, so bad credentials
give one clear error per attempt instead of a tight loop.

What the broker says is read, not assumed: the CONNACK (a refusal of MQTT 5 makes
`protocol: auto` fall back to 3.1.1), the first bytes of a peer that is not an
MQTT broker at all, every SUBACK (a refused filter is an error, retried with
backoff), and the reason of every disconnect (a session taken over by another
client with our client_id is named as such). `online` is published only once
the command subscription is granted: a bridge that cannot hear commands does
not claim to be there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import socket
import ssl
import sys
import threading
import time
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.config import MqttConfig
from bridge.core import topics
from bridge.core.command import request_id_of
from bridge.core.errors import ConfigError
from bridge.infra.logs import redact
from bridge.service.capture import Command

log = logging.getLogger("bridge.mqtt")

READ_BATCH = 256  # MQTT packets handled per socket wake-up at most
# Messages waiting for the broker (queued in paho or by us) above which commands are no longer
# acknowledged, so the broker stops sending them, until half of them are through. paho refuses a
# 65,536th (its message ids are 16-bit), and each waiting message costs ~3 KB in paho (a lock and
# a condition per message): measured in a 30,000-command flood, 16,000 waiting held ~50 MB.
PUBLISH_HIGH_WATER = 2_000
# Messages handed to paho at once, at most (its in-flight window): the rest wait in our own queue
# as one small tuple each, not as paho's message + info + lock + condition (~3 KB). A flood's states
# then cost a tenth of the memory at the peak, and CPython, which cannot move objects, keeps far
# fewer half-used pages once it is over (measured: bench/flood.py).
PAHO_WINDOW = 1000
# What an MQTT 5 broker may deliver to us beyond the largest command payload: the fixed header,
# the topic and the properties (a Response Topic, Correlation Data).
PACKET_OVERHEAD = 16_384
# MQTT 5 Receive Maximum: commands the broker sends us unacknowledged, at most. Without it the
# broker may send 65,535 (measured: 91,719 held in a flood while we held acks back); with it,
# holding acks back (journal not writable, back-pressure) really stops intake.
RECEIVE_MAXIMUM = 1000
# paho also answers MQTT_ERR_QUEUE_SIZE when the message id it drew is still in use by an older
# message (ids wrap at 65,535); the next id is free, so such a refusal is retried at once.
ID_RETRIES = 8

ONLINE = json.dumps({"state": "online"}, separators=(",", ":")).encode()
OFFLINE = json.dumps({"state": "offline"}, separators=(",", ":")).encode()

CONNACK = 0x20  # first byte of the only packet an MQTT broker sends first
UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason; paho also reports a 3.1.1 broker's "refused: version" as it
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another connection with our client_id took the session
SHARE_PROBE_PREFIX = "$capture-bridge-probe-"  # device id of the probe commands (never executed)
SHARE_PROBE_WAIT = 5.0  # seconds the probe may take to come back


def describe_peer(head: bytes, tls: bool) -> str:
    """What a peer that answered an MQTT CONNECT with something other than a CONNACK sent."""
    if not tls and head[:1] in (b"\x15", b"\x16"):
        return f"received a TLS record ({head[:3].hex(' ')}) — this is a TLS port: use an mqtts:// URL"
    line = head.split(b"\n", 1)[0].rstrip(b"\r")[:40]
    if line and all(32 <= c < 127 for c in line):
        return f"received {line.decode()!r} — not an MQTT broker"
    return f"received {head[:8].hex(' ')} instead of an MQTT CONNACK — not an MQTT broker"


def disconnect_reason(flags: Any, reason: ReasonCode) -> str:
    """A disconnect reason a person can act on (paho says "Unspecified error" for a plain lost connection)."""
    from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
    if from_broker:
        return f"the broker closed it: {reason} (0x{reason.value:02X})"
    if str(reason) == "Keep alive timeout":
        return "no answer from the broker within the keepalive (network down or broker stuck)"
    if str(reason) == "Unspecified error":
        return "connection lost (the broker or the network closed it)"
    return str(reason)


def jittered(delay: float) -> float:
    """The pause actually slept for a backoff `delay` (±20 %, so instances do not retry in step)."""
    return delay * (0.8 + 0.4 * random.random())


def refusal_hint(reason: ReasonCode, config: MqttConfig) -> str:
    """What to change for a refused CONNECT."""
    name = str(reason)
    if reason.value == UNSUPPORTED_PROTOCOL:
        return ' (set mqtt.protocol: auto or "3.1.1")'
    if "user name or password" in name or "authori" in name.lower():
        return " (check mqtt.username and mqtt.password)"
    if "Client identifier" in name:
        return " (check mqtt.client_id)"
    return ""


class _Queued(NamedTuple):
    """A publish paho could not take yet (its queue was full); sent as acknowledgements free room."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None
    on_acked: Callable[[], None] | None


def shown(topic: str, limit: int = 120) -> str:
    """A topic short enough for a log line."""
    return topic if len(topic) <= limit else f"{topic[:limit]}... ({len(topic.encode('utf-8', 'surrogatepass'))} bytes)"


def unpublishable(topic: str) -> str | None:
    """Why paho would refuse to publish to `topic` (it raises ValueError), or None.

    Checked before a message is queued in the bridge, not only when paho gets it: by then the
    caller has been told it was sent.
    """
    try:
        encoded = topic.encode()
    except UnicodeEncodeError:
        return "the topic is not UTF-8"
    if not encoded:
        return "the topic is empty"
    if b"+" in encoded or b"#" in encoded:
        return "a wildcard in a topic to publish to"
    if len(encoded) > 65535:
        return "the topic is longer than 65,535 bytes"
    return None


def response_topic_refusal(topic: str, allowed: Sequence[str], denied: Sequence[str]) -> str | None:
    """Why the bridge must not publish a state to a command's Response Topic, or None when it may.

    The bridge publishes with its own broker identity, so a Response Topic is a request to write
    somewhere in its name: never a wildcard or a `$` topic, never under `denied` (the bridge's own
    topics, Home Assistant discovery), and only where a filter of `allowed` matches.
    """
    if not topic:
        return "empty"
    if "+" in topic or "#" in topic:
        return "has a wildcard"
    if topic.startswith("$"):
        return "is a $ topic"
    for prefix in denied:
        if topic == prefix or topic.startswith(prefix + "/"):
            return f"is under {prefix}/, which the bridge owns"
    if not any(paho.topic_matches_sub(sub, topic) for sub in allowed):
        return "matches no filter of mqtt.response_topics"
    return None


def _why(exc: OSError | ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """TLS for mqtts://: system CAs or `ca_file`, optional client certificate, `tls_insecure` to skip checks."""
    # Raises ConfigError naming the key: a missing or unreadable file is the user's to fix (exit 2).
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.ca_file: cannot use {config.ca_file} as a CA bundle: {_why(exc)}") from None
    if config.cert_file is not None:
        for key, path in (("mqtt.cert_file", config.cert_file), ("mqtt.key_file", config.key_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{key}: no such file: {path}")
        try:
            context.load_cert_chain(str(config.cert_file), str(config.key_file) if config.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.cert_file / mqtt.key_file: cannot load {config.cert_file}: {_why(exc)}") from None
    if config.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class MqttAdapter:
    """Connects, subscribes, turns messages into `Command`s and publishes states."""

    def __init__(
        self,
        config: MqttConfig,
        on_command: Callable[[Command], None],
        *,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        on_retained_command: Callable[[str, bytes], None] | None = None,
        before_ack: Callable[[], bool] | None = None,
        handlers: dict[str, Callable[[bytes], None]] | None = None,
        filter_handlers: dict[str, Callable[[str, bytes, bool], None]] | None = None,
        max_payload_bytes: int | None = None,
        discovery_prefix: str | None = None,
    ) -> None:
        self._config = config
        self._on_command = on_command
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_retained_command = on_retained_command
        self._before_ack = before_ack
        # Message ids and QoS of what we have not acknowledged yet, in arrival order; the first one
        # is arrival number _acked. Two bytes and one each: a flood holds tens of thousands.
        self._ack_mids = array("H")
        self._ack_qos = array("B")
        self._acked = 0
        # Commands (and settings changes) that arrived while back-pressure was on, not run and not
        # acknowledged until the queue drains (see _handle_message), and their arrival numbers from
        # _held_at[_held_head] on.
        self._held: deque[Command | Callable[[], None]] = deque()
        self._held_at = array("Q")
        self._held_head = 0
        self._handlers = dict(handlers or {})
        # Topic filter -> handler(topic, payload, retained); tried after the exact topics.
        self._filter_handlers = dict(filter_handlers or {})
        self._base = config.base_topic
        self._max_packet = max_payload_bytes + PACKET_OVERHEAD if max_payload_bytes is not None else None
        self._response_allowed = tuple(config.response_topics)
        self._response_denied = (self._base,) + ((discovery_prefix,) if discovery_prefix else ())
        self._overflow: deque[_Queued] = deque()
        self.backpressure = False
        self._pressure_warned = -60.0  # when back-pressure was last logged at WARNING
        self._bulk = 0  # waiting messages that are part of a discovery announcement
        self._auto = config.protocol == "auto"
        # auto starts with MQTT 5 and falls back to 3.1.1 when the broker refuses it.
        self._v5 = config.protocol != "3.1.1"
        self._fell_back = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._acks: dict[int, Callable[[], None]] = {}
        self._disconnected = asyncio.Event()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._stopping = False
        self._refused: str | None = None
        self._refused_code: int | None = None
        self._answered = asyncio.Event()  # a CONNACK came, accepting or refusing
        self._peer: str | None = None  # what a peer that is no MQTT broker sent
        self._silent = False  # the last attempt got no answer at all within connect_timeout
        self._last_error: str | None = "not connected yet"
        self._connected_at = 0.0
        self._drop_reason: str | None = None
        self._taken_over = False
        self._drop_lost = False  # the last drop was a lost connection, not a DISCONNECT from the broker
        self._short_drops = 0
        self._subscribing: dict[int, str] = {}  # SUBSCRIBE mid -> filter, until its SUBACK
        self._sub_delay: dict[str, float] = {}
        self._problems: dict[str, str] = {}  # why we cannot do the job while connected (for /healthz)
        self._share_probe: str | None = None  # the "$share/..." trap topic while a check runs
        self._share_nonce = ""
        self._share_checked = False
        self.listening = False  # the command subscription is granted on this connection
        self._misc: asyncio.Task[None] | None = None
        self._intake = True
        self.connected = False
        self.connect_count = 0
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        cfg = self._config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else not cfg.persistent_session,
            reconnect_on_failure=False,
            # We acknowledge a command only after the journal holds it (see _flush_acks).
            manual_ack=True,
        )
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password else None
            if password:
                redact.add(password)
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set_context(tls_context(cfg))
        client.connect_timeout = cfg.connect_timeout
        client.will_set(topics.availability_topic(self._base), OFFLINE, qos=1, retain=True)
        # Unbounded queue while offline: states must survive a broker restart.
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(PAHO_WINDOW)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        # Why the last attempt failed before the broker answered it (TLS alert, reset, ...).
        self._connect_error: str | None = None
        return client

    # --- paho on the asyncio loop ---------------------------------------------

    def _in_loop(self, fn: Callable[[], None]) -> None:
        # paho calls socket hooks from connect(), which runs in an executor thread.
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        loop = self._loop

        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # paho leaves Nagle on: each small PUBLISH/PUBACK would wait for the peer's delayed ACK
            # (measured: +9.5 ms per state at 100 commands/s; 1.4 ms p50 with it off).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def watch() -> None:
            loop.add_reader(sock, self._read)
            if self._misc is None or self._misc.done():
                self._misc = loop.create_task(self._misc_loop())

        self._in_loop(watch)

    def _use_protocol(self, v5: bool) -> None:
        # paho fixes the version in its constructor; a new client would lose the publishes it
        # queued while we were offline (journal replays), so the one we have is switched.
        self._v5 = v5
        self.client._protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        if not v5:
            self.client._clean_session = not self._config.persistent_session

    def _peer_is_mqtt(self) -> bool:
        # Before the CONNACK, look at what the peer sent without consuming it: an HTTP server or a
        # TLS port answers with bytes paho would misparse into a confusing error much later.
        if self._answered.is_set():
            return True
        sock = self.client.socket()
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            return True
        try:
            head = sock.recv(64, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return True  # paho's own read reports it
        if not head or head[0] == CONNACK:
            return True
        self._peer = describe_peer(head, self._config.tls)
        self.client._loop_rc_handle(paho.MQTT_ERR_PROTOCOL)
        return False

    def _read(self) -> None:
        if not self._peer_is_mqtt():
            return
        # paho's loop_read() handles ONE packet per call while nothing of ours is in flight, so a
        # burst of commands arrived one per event-loop pass (measured: 1000 commands took 0.44 s to
        # read). Drain what the socket holds, up to a bound that keeps the loop fair to HTTP work.
        packet_read = getattr(self.client, "_packet_read", None)
        if packet_read is None:  # a paho without the private reader: the slow, public way
            self.client.loop_read()
            return
        for _ in range(READ_BATCH):
            if self.client.socket() is None:
                return
            rc = packet_read()
            if rc == paho.MQTT_ERR_AGAIN:
                return
            if rc != paho.MQTT_ERR_SUCCESS:
                self.client._loop_rc_handle(rc)
                return
        # Batch full. A plain socket stays readable, but TLS may hold decrypted bytes the
        # selector cannot see: come back for them on the next pass.
        sock = self.client.socket()
        if isinstance(sock, ssl.SSLSocket) and sock.pending() and self._loop is not None:
            self._loop.call_soon(self._read)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        loop = self._loop

        def unwatch() -> None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock)
                loop.remove_writer(sock)

        self._in_loop(unwatch)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        loop = self._loop
        self._in_loop(lambda: loop.add_writer(sock, self.client.loop_write))

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        loop = self._loop

        def unwatch() -> None:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_writer(sock)

        self._in_loop(unwatch)

    async def _misc_loop(self) -> None:
        # Keepalive pings and retry timers; one wake-up a second, no busy polling.
        while self.client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            try:
                self._tick()
            except Exception:  # the keepalive timer must survive a bug in ours
                log.exception("publish queue check failed")
            await asyncio.sleep(1)

    # --- callbacks (never block, never raise) -----------------------------------

    def _handle_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        # The broker answered: stop formatting paho's per-packet log lines (see _connect_blocking).
        client.on_log = None
        self._answered.set()
        cfg = self._config
        if reason.is_failure:
            self._refused, self._refused_code = str(reason), reason.value
            if reason.value == UNSUPPORTED_PROTOCOL and self._v5 and self._auto:
                log.info("broker %s:%d does not speak MQTT 5 (%s); trying MQTT 3.1.1", cfg.host, cfg.port, reason)
                return
            hint = refusal_hint(reason, cfg)
            self._last_error = f"broker {cfg.host}:{cfg.port} refused the connection: {reason}{hint}"
            log.error("%s", self._last_error)
            return
        self._refused = self._refused_code = None
        self._last_error = None
        self.connected = True
        self.connect_count += 1
        self._connected_at = time.monotonic()
        self.listening = False
        self._subscribing.clear()
        session = "resumed" if getattr(flags, "session_present", False) else "new"
        version = "5" if self._v5 else "3.1.1"
        how = ""
        if self._auto:
            how = ", auto: the broker refused MQTT 5" if self._fell_back else ", auto"
        log.info("connected to %s:%d (MQTT %s%s; %s session; client_id %s)", cfg.host, cfg.port, version, how,
                 session, cfg.client_id)
        if self._intake:
            self._subscribe_commands()
        for topic in [*self._handlers, *self._filter_handlers]:
            self._subscribe(topic, 1)
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception:
                log.exception("on_connected hook failed")

    def _subscribe_commands(self) -> None:
        topic = topics.set_filter(self._base, self._config.shared_group)
        if self._v5:
            # Retain-as-published: a command published with retain=true is seen as retained even
            # while we are connected, so it is never executed (it would re-fire on every restart).
            self._subscribe(topic, SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            self._subscribe(topic, 1)

    def _subscribe(self, topic: str, options: int | SubscribeOptions) -> None:
        if isinstance(options, SubscribeOptions):
            rc, mid = self.client.subscribe(topic, options=options)
        else:
            rc, mid = self.client.subscribe(topic, qos=options)
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._subscribing[mid] = topic

    def _handle_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        topic = self._subscribing.pop(mid, None)
        if topic is None or not reasons:
            return
        commands = topic == topics.set_filter(self._base, self._config.shared_group)
        reason = reasons[0]
        if reason.is_failure:
            delay = self._sub_delay.get(topic, self._config.reconnect_min)
            pause = jittered(delay)
            self._sub_delay[topic] = min(delay * 2, self._config.reconnect_max)
            why = f"the broker refused the subscription to {topic}: {reason} (0x{reason.value:02X})"
            self._problems[topic] = why
            if commands and self._config.shared_group:
                hint = "the broker may not support shared subscriptions: try without mqtt.shared_group"
            elif commands:
                hint = "no command reaches the bridge until the broker's ACL lets this client read it"
            else:
                hint = "check the broker's ACL"
            log.error("%s; %s; next try in %.1fs", why, hint, pause)
            assert self._loop is not None
            count = self.connect_count
            self._loop.call_later(pause, self._resubscribe, topic, count)
            return
        self._sub_delay.pop(topic, None)
        if self._problems.pop(topic, None) is not None:
            log.info("the broker granted the subscription to %s now", topic)
        else:
            log.debug("subscribed to %s (%s)", topic, reason)
        if commands:
            self.listening = True
            if self._config.shared_group and not self._share_checked:
                self._probe_shared_subscription()  # online once the probe came through
            else:
                # Online only now: a bridge that cannot hear commands must not look available.
                self._publish_online()

    def _publish_online(self) -> None:
        self.client.publish(topics.availability_topic(self._base), ONLINE, qos=1, retain=True)

    def _resubscribe(self, topic: str, connection: int) -> None:
        if not self.connected or connection != self.connect_count or self._stopping:
            return  # a new connection subscribes afresh
        if topic == topics.set_filter(self._base, self._config.shared_group):
            if self._intake:
                self._subscribe_commands()
        else:
            self._subscribe(topic, 1)

    def _probe_shared_subscription(self) -> None:
        # Some brokers grant `$share/<group>/<filter>` but treat it as a plain filter (it then only
        # matches topics that start with "$share/"), and the bridge is deaf. Two probes tell:
        # - an empty command on a probe device: the group must deliver it, to us or to a member,
        #   which echoes it on <base>/bridge/probe/<nonce>; nothing back means deaf;
        # - the same on the literal "$share/..." topic: a broker that honours shared subscriptions
        #   never delivers it; one that treats the filter as plain gives it to us at once.
        if self._share_checked or self._share_probe is not None:
            return
        group = self._config.shared_group
        assert group is not None
        self._share_nonce = uuid.uuid4().hex[:12]
        probe = topics.command_topic(self._base, SHARE_PROBE_PREFIX + self._share_nonce)
        self._share_probe = f"$share/{group}/{probe}"
        # Not tracked as a subscription of ours: an ACL refusing it only leaves the direct path.
        self.client.subscribe(self._echo_topic(self._share_nonce), qos=1)
        self.client.publish(self._share_probe, b"", qos=1)
        self.client.publish(probe, b"", qos=1)
        assert self._loop is not None
        self._loop.call_later(SHARE_PROBE_WAIT, self._shared_subscription_unconfirmed, self.connect_count)

    def _echo_topic(self, nonce: str) -> str:
        return f"{self._base}/bridge/probe/{nonce}"

    def _share_probe_arrived(self, device: str) -> None:
        nonce = device[len(SHARE_PROBE_PREFIX):]
        if self._share_probe is not None and nonce == self._share_nonce:
            self._shared_subscription_ok()
        elif self._config.shared_group and nonce and "/" not in nonce:
            # Another member's probe reached us through the group: tell it so.
            self.client.publish(self._echo_topic(nonce), b"", qos=1)

    def _shared_subscription_ok(self) -> None:
        self._share_checked = True
        self._share_probe = None
        self.client.unsubscribe(self._echo_topic(self._share_nonce))
        log.debug("shared subscription honoured: the probe command came through $share/%s/...",
                  self._config.shared_group)
        self._publish_online()

    def _shared_subscription_unconfirmed(self, connection: int) -> None:
        if self._share_probe is None or not self.connected or connection != self.connect_count:
            return
        self._shared_subscription_ignored(
            f"the broker delivered no probe command through $share/{self._config.shared_group}/... within "
            f"{SHARE_PROBE_WAIT:g}s: it does not seem to support shared subscriptions, and this bridge would "
            "receive no commands; remove mqtt.shared_group (or use a broker that supports them)")

    def _shared_subscription_ignored(self, why: str | None = None) -> None:
        self._share_checked = True
        self._share_probe = None
        self.client.unsubscribe(self._echo_topic(self._share_nonce))
        why = why or (f"the broker treats $share/{self._config.shared_group}/... as a plain topic, not as a "
                      "shared subscription: this bridge receives no commands; remove mqtt.shared_group or use a "
                      "broker that supports shared subscriptions")
        self._problems["$share"] = why
        self.listening = False
        log.error("%s", why)
        # Never online on this broker; `offline` also replaces an `online` a previous run left.
        self.client.publish(topics.availability_topic(self._base), OFFLINE, qos=1, retain=True)

    def _handle_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        was_connected, self.connected = self.connected, False
        self.listening = False
        self._subscribing.clear()
        if self._share_probe is not None:
            # The broker dropped us while the probe was out: do not risk it again.
            self._share_probe = None
            self._share_checked = True
            log.warning("could not verify that the broker honours mqtt.shared_group (disconnected during the check)")
        # Acks for this connection can no longer be sent; the broker redelivers those commands
        # (DUP) on our persistent session and the service recognises the ones it already runs.
        self._acked += len(self._ack_mids)
        del self._ack_mids[:], self._ack_qos[:]
        # Unacknowledged: the broker delivers them again on our persistent session.
        self._held.clear()
        del self._held_at[:]
        self._held_head = 0
        if was_connected and not self._stopping:
            self._drop_reason = disconnect_reason(flags, reason)
            self._taken_over = getattr(reason, "value", None) == SESSION_TAKEN_OVER
            self._drop_lost = not getattr(flags, "is_disconnect_packet_from_server", False)
            self._last_error = f"disconnected from the broker: {self._drop_reason}"
        if self._on_disconnected is not None:
            try:
                self._on_disconnected()
            except Exception:
                log.exception("on_disconnected hook failed")
        self._disconnected.set()

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        arrival = self._acked + len(self._ack_mids)
        if message.qos > 0:
            # Every message is acknowledged, in arrival order (MQTT requires it), once per loop pass.
            if not self._ack_mids:
                assert self._loop is not None
                self._loop.call_soon(self._flush_acks)
            self._ack_mids.append(message.mid)
            self._ack_qos.append(message.qos)
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("ignored a message whose topic is not UTF-8")
            return
        if topic.startswith("$share/"):
            if self._share_probe is not None and topic == self._share_probe:
                self._shared_subscription_ignored()
            return
        if self._share_probe is not None and topic == self._echo_topic(self._share_nonce):
            self._shared_subscription_ok()
            return
        try:
            handler = self._handlers.get(topic)
            if handler is not None:
                handler(bytes(message.payload))
                return
            for topic_filter, on_match in self._filter_handlers.items():
                if paho.topic_matches_sub(topic_filter, topic):
                    call = functools.partial(on_match, topic, bytes(message.payload), bool(message.retain))
                    if topics.device_of_settings_set(topic, self._base) is not None:
                        # Keeps its place among the commands: a held command must not run with
                        # settings sent after it.
                        self._run_or_hold(message.qos, arrival, call)
                    else:
                        call()
                    return
            device = topics.device_of(topic, self._base)
            if device is None:
                if topic == topics.command_topic(self._base, ""):
                    log.warning("ignored a command on %s: the device id is empty", topic)
                return
            if device.startswith(SHARE_PROBE_PREFIX):
                self._share_probe_arrived(device)
                return
            if not message.payload:
                # How a retained command is cleared (`mosquitto_pub -r -n`); 3.1.1 delivers the clearing
                # as a live empty message. It is no command, and must not overwrite the last real state.
                log.debug("ignored an empty message on %s (the clearing of a retained command)", topic,
                          extra={"device": device})
                return
            if message.retain:
                # A retained command is stale: a restart must not fire old captures.
                log.warning("ignored a retained command on %s (retained commands are never executed)", topic,
                            extra={"device": device})
                if self._on_retained_command is not None:
                    self._on_retained_command(device, bytes(message.payload))
                return
            response_topic: str | None = None
            correlation: bytes | None = None
            props = message.properties
            if props is not None:
                response_topic = getattr(props, "ResponseTopic", None)
                correlation = getattr(props, "CorrelationData", None)
            payload = bytes(message.payload)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("command received on %s: %d bytes, qos %d, retain=%s, dup=%s%s", topic, len(payload),
                          message.qos, bool(message.retain), bool(message.dup),
                          f", response topic {shown(response_topic)}" if response_topic else "",
                          extra={"device": device, "request_id": request_id_of(payload)})
            # Interned: the device id of every command held or queued for one device is one string.
            command = Command(sys.intern(device), payload, response_topic, correlation, bool(message.dup))
            self._run_or_hold(message.qos, arrival, command)
        except Exception:
            log.exception("failed to hand over a message on %s", message.topic)

    def _run_or_hold(self, qos: int, arrival: int, item: Command | Callable[[], None]) -> None:
        if qos > 0 and (self._held or self.backpressure):
            # Back-pressure holds our acknowledgements, so the broker should stop at our Receive
            # Maximum; Mosquitto 2.0 does not always (eclipse/mosquitto#2301: measured, 70,000
            # commands past it in make flood). What comes anyway waits here, unacknowledged and
            # not run, in order, instead of each adding a cloud call and a state to the queue.
            self._held.append(item)
            self._held_at.append(arrival)
            return
        self._hand_over(item)

    def _hand_over(self, item: Command | Callable[[], None]) -> None:
        try:
            if isinstance(item, Command):
                self._on_command(item)
            else:
                item()
        except Exception:
            device = item.device if isinstance(item, Command) else None
            log.exception("failed to hand over a command", extra={"device": device})

    def _release_held(self) -> None:
        """Run held commands, a Receive Maximum's worth per loop pass, while the queue has room."""
        released = 0
        while self._held and released < RECEIVE_MAXIMUM and not self._held_back():
            self._hand_over(self._held.popleft())
            self._held_head += 1
            released += 1
        if self._held_head > len(self._held_at) // 2:
            del self._held_at[: self._held_head]
            self._held_head = 0
        if self._held and released and not self.backpressure:
            assert self._loop is not None
            self._loop.call_soon(self._flush_acks)

    def _flush_acks(self, *, closing: bool = False) -> None:
        # Closing, back-pressure no longer matters: what the journal holds is acknowledged, or the
        # broker would deliver it again at the next start and the journal would run it twice.
        if not self._ack_mids or (self._held_back() and not closing):
            return
        if not closing:
            self._release_held()
        if self._before_ack is not None:
            try:
                durable = self._before_ack()
            except Exception:
                log.exception("journal commit failed; commands not acknowledged")
                durable = False
            if not durable:
                # Kept, not acknowledged: the broker stops sending once its in-flight window is full.
                # resume_acks() sends them when the journal can be written again.
                return
        # Up to the first held command: it is not in the journal yet, and acknowledgements go in order.
        count = self._held_at[self._held_head] - self._acked if self._held else len(self._ack_mids)
        mids, qos = self._ack_mids, self._ack_qos
        for i in range(count):
            self.client.ack(mids[i], qos[i])
        del mids[:count], qos[:count]
        self._acked += count

    def resume_acks(self) -> None:
        """Acknowledge the commands held back (the journal is writable again, or the queue drained)."""
        self._flush_acks()

    def _in_paho(self) -> int:
        # paho's outgoing queue: private, but the only count there is.
        return len(getattr(self.client, "_out_messages", ()))

    @property
    def waiting_publishes(self) -> int:
        """Messages the broker has not acknowledged yet, or that wait for room to be sent."""
        return self._in_paho() + len(self._overflow)

    @property
    def held_commands(self) -> int:
        """Commands received under back-pressure, not run and not acknowledged yet."""
        return len(self._held)

    def _held_back(self) -> bool:
        """Back-pressure: too many messages wait for the broker to take more commands now."""
        waiting = self.waiting_publishes - self._bulk
        if not self.backpressure and waiting > PUBLISH_HIGH_WATER:
            self.backpressure = True
            # In a flood this switches several times a second: one WARNING a minute, the rest DEBUG.
            now = time.monotonic()
            level = logging.WARNING if now - self._pressure_warned >= 60 else logging.DEBUG
            if level == logging.WARNING:
                self._pressure_warned = now
            log.log(level, "%d messages wait for the broker: not taking commands until they are through", waiting)
        elif self.backpressure and waiting <= PUBLISH_HIGH_WATER // 2:
            self.backpressure = False
            log.debug("the broker has caught up: taking commands again (%d held)", len(self._held))
        return self.backpressure

    def _handle_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
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
        if self.backpressure and not self._held_back():
            self._flush_acks()

    def _send_overflow(self, acked: int = 0) -> None:
        while self._overflow and self._in_paho() - acked < PAHO_WINDOW:
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

    def _tick(self) -> None:
        # Once a second: what waits in the overflow is retried even when no acknowledgement comes
        # to trigger it, and held-back commands run and are acknowledged once the queue is short again.
        if self._overflow:
            self._send_overflow()
        if (self.backpressure and not self._held_back()) or (self._held and not self.backpressure):
            self._flush_acks()

    # --- publishing -------------------------------------------------------------

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
        """Publish (queued while disconnected or while paho's queue is full); never raises.

        `on_acked` runs when the broker has it. Returns False, after a WARNING, when the topic
        cannot be published at all (too long, a wildcard, not UTF-8). A `bulk` message (part of
        a discovery announcement, which bounds itself) does not count towards back-pressure:
        commands are not held while Home Assistant is told about 3,000 cameras.
        """
        refused = unpublishable(topic)
        if refused is not None:
            log.warning("cannot publish to %s: %s", shown(topic), refused)
            return False
        if bulk:
            self._bulk += 1
            on_acked = self._bulk_acked(on_acked)
        item = _Queued(topic, payload, self._config.qos if qos is None else qos, retain, properties, on_acked)
        if self._overflow or self._in_paho() >= PAHO_WINDOW:
            self._overflow.append(item)  # behind what already waits, in order
            self._all_acked.clear()
            return True
        info = self._paho_publish(item)
        if info is None:
            if bulk:
                self._bulk -= 1
            return False
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            # States are never dropped: kept here until acknowledgements make room (_handle_publish).
            self._overflow.append(item)
            self._all_acked.clear()
            return True
        self._track(info, item)
        return True

    def _bulk_acked(self, then: Callable[[], None] | None) -> Callable[[], None]:
        def acked() -> None:
            self._bulk = max(0, self._bulk - 1)
            if then is not None:
                then()

        return acked

    def _paho_publish(self, item: _Queued) -> paho.MQTTMessageInfo | None:
        try:
            for _ in range(ID_RETRIES):
                info = self.client.publish(
                    item.topic, item.payload, qos=item.qos, retain=item.retain, properties=item.properties
                )
                if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
                    break
            return info
        except ValueError as exc:  # UnicodeEncodeError is one too
            log.warning("cannot publish to %s: %s", shown(item.topic), exc)
            return None

    def _track(self, info: paho.MQTTMessageInfo, item: _Queued) -> None:
        if item.on_acked is None:
            return
        if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN) and item.qos:
            self._acks[info.mid] = item.on_acked
            self._all_acked.clear()
        elif info.rc == paho.MQTT_ERR_SUCCESS:
            item.on_acked()

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
        """The state, retained on the device's state topic; the final one also to the Response Topic.

        Never raises. When neither topic can be published, the state is dropped with a WARNING
        and `on_acked` runs at once: no broker will ever acknowledge it.
        """
        sent = self.publish(topics.state_topic(self._base, device), payload, retain=retain, on_acked=on_acked)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("state published on %s (%d bytes, %s): %s", topics.state_topic(self._base, device), len(payload),
                      "retained" if retain else "not retained", payload[:300].decode(errors="replace"),
                      extra={"device": device})
        if response_topic and self._v5:
            refusal = response_topic_refusal(response_topic, self._response_allowed, self._response_denied)
            if refusal is not None:
                log.warning("Response Topic %s refused (%s): the state goes only to the state topic",
                            shown(response_topic), refusal, extra={"device": device})
            else:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                if correlation is not None:
                    props.CorrelationData = correlation
                if self.publish(response_topic, payload, retain=False, properties=props,
                                on_acked=None if sent else on_acked):
                    return
        if not sent:
            log.warning("state dropped: no topic it can be published on", extra={"device": device})
            if on_acked is not None:
                on_acked()

    # --- lifecycle ----------------------------------------------------------------

    def _connect_blocking(self) -> None:
        cfg = self._config
        properties: Properties | None = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = cfg.session_expiry if cfg.persistent_session else 0
            if self._max_packet is not None:
                # The broker drops larger messages instead of sending them to us to refuse.
                properties.MaximumPacketSize = self._max_packet
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            clean_start = not cfg.persistent_session

        def note_error(client: paho.Client, userdata: Any, level: int, message: str) -> None:
            # A broker that rejects us during TLS (e.g. a missing client certificate under TLS 1.3)
            # just closes the socket; paho only says why in its log. Kept until the CONNACK.
            if level == paho.MQTT_LOG_ERR:
                self._connect_error = message

        self._connect_error = None
        self.client.on_log = note_error
        self.client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=clean_start,
                            properties=properties)

    def health(self) -> list[str]:
        """Why the bridge cannot take commands right now (empty when it can)."""
        if not self.connected:
            return [self._last_error or f"not connected to the broker {self._config.host}:{self._config.port}"]
        problems = list(self._problems.values())
        if not problems and self._intake and not self.listening:
            problems.append("waiting for the broker to grant the command subscription")
        return problems

    async def _await_connack(self) -> None:
        # paho would wait a whole keepalive (60 s) for a CONNACK that a non-MQTT port never sends.
        answered = asyncio.ensure_future(self._answered.wait())
        dropped = asyncio.ensure_future(self._disconnected.wait())
        try:
            await asyncio.wait({answered, dropped}, timeout=self._config.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
            dropped.cancel()
        if not self._answered.is_set() and not self._disconnected.is_set():
            self._silent = True
            self._peer = (f"received nothing within {self._config.connect_timeout:g}s of our MQTT CONNECT — "
                          "not an MQTT broker, or a TLS port (use an mqtts:// URL)")
            self.client._loop_rc_handle(paho.MQTT_ERR_PROTOCOL)

    def _closed_early(self, pause: float) -> bool:
        """After a close without CONNACK: log why; True when MQTT 3.1.1 should be tried at once."""
        cfg = self._config
        where = f"broker {cfg.host}:{cfg.port}"
        if self._silent and self._v5 and self._auto:
            # Some brokers (amqtt 0.12) never answer an MQTT 5 CONNECT at all.
            log.info("%s did not answer an MQTT 5 CONNECT within %gs; trying MQTT 3.1.1", where,
                     cfg.connect_timeout)
            return True
        if self._peer is not None:
            self._last_error = f"{where}: {self._peer}"
        elif self._v5 and self._auto:
            log.info("%s closed the connection without answering an MQTT 5 CONNECT; trying MQTT 3.1.1", where)
            return True
        elif self._v5:
            self._last_error = (f"{where} closed the connection without answering an MQTT 5 CONNECT: "
                                f"{self._connect_error or 'no reason given'} (if the broker only speaks 3.1.1, "
                                "set mqtt.protocol: auto or \"3.1.1\")")
        else:
            hint = ""
            if cfg.tls and cfg.cert_file is None:
                hint = " (if the broker requires a client certificate, set mqtt.cert_file and mqtt.key_file)"
            elif not cfg.tls:
                hint = " (check the port; a TLS port needs an mqtts:// URL)"
            self._last_error = (f"{where} closed the connection before accepting it: "
                                f"{self._connect_error or 'no reason given'}{hint}")
        log.error("%s; next try in %.1fs", self._last_error, pause)
        return False

    def _was_taken_over(self, delay: float) -> bool:
        # MQTT 5 may say so (0x8E). On 3.1.1, and with brokers that do not send the reason (Mosquitto
        # 2.0 just closes the socket), two lost connections in a row, each soon after a successful
        # connect, are the same sign.
        if self._taken_over:
            return True
        lived = time.monotonic() - self._connected_at
        # "Soon": before the other instance's backoff would have brought it back (it grows like ours).
        if self._drop_lost and lived < max(5.0, 2.5 * delay):
            self._short_drops += 1
        else:
            self._short_drops = 0
        return self._short_drops >= 2

    async def run(self) -> None:
        """Connect and stay connected until `stop()`; reconnect with backoff."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        cfg = self._config
        delay = cfg.reconnect_min
        taken_over_said = False
        while not self._stopping:
            self._disconnected.clear()
            self._answered.clear()
            self._refused = self._refused_code = None
            self._peer = None
            self._silent = False
            self._drop_reason = None
            self._taken_over = self._drop_lost = False
            accepted = self.connect_count
            pause = jittered(delay)
            try:
                await self._loop.run_in_executor(None, self._connect_blocking)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._last_error = f"cannot reach broker {cfg.host}:{cfg.port}: {exc}"
                log.warning("%s; next try in %.1fs", self._last_error, pause)
            else:
                await self._await_connack()
                await self._disconnected.wait()
                if self._stopping:
                    break
                if self.connect_count > accepted:
                    if self._was_taken_over(delay):
                        if not taken_over_said:
                            taken_over_said = True
                            what = ("the broker says another client connected with client_id %r and took over "
                                    "the session" if self._taken_over else
                                    "the broker closed the connection right after connecting, twice in a row: "
                                    "most likely another client with client_id %r took over the session")
                            log.error(what + "; every bridge instance needs its own mqtt.client_id, or set the "
                                      "same mqtt.shared_group on all of them; next try in %.1fs", cfg.client_id, pause)
                        else:
                            log.warning("session taken over again (client_id %r); next try in %.1fs",
                                        cfg.client_id, pause)
                        # Keep backing off: resetting would fight the other instance once a second forever.
                    else:
                        taken_over_said = False
                        delay = cfg.reconnect_min
                        pause = jittered(delay)
                        log.warning("disconnected from the broker: %s; reconnecting in %.1fs",
                                    self._drop_reason, pause)
                elif (self._refused_code == UNSUPPORTED_PROTOCOL and self._v5 and self._auto) or (
                    self._refused is None and self._closed_early(pause)
                ):
                    self._fell_back = True
                    self._use_protocol(False)
                    continue
                elif self._refused is None and self._auto and self._fell_back and (
                    self._peer is None or self._silent
                ):
                    # 3.1.1 was closed too: not a protocol matter after all; MQTT 5 again next time.
                    self._fell_back = False
                    self._use_protocol(True)
            await asyncio.sleep(pause)
            if self.connect_count == accepted or self._was_taken_over_streak():
                delay = min(delay * 2, cfg.reconnect_max)

    def _was_taken_over_streak(self) -> bool:
        return self._taken_over or self._short_drops >= 2

    def stop_intake(self) -> None:
        """Stop subscribing on reconnects.

        Alone, the subscription stays: it is what makes the broker queue commands for our
        persistent session while we are down. In a shared group we leave it, so the broker
        gives the group's commands to the members that stay up.
        """
        self._intake = False
        if self._config.shared_group and self.connected:
            self.client.unsubscribe(topics.set_filter(self._base, self._config.shared_group))

    async def close(self, grace: float = 5.0) -> None:
        """Publish `offline`, wait up to `grace` seconds for outstanding acknowledgements, disconnect."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def offline_acked() -> None:
            if not done.done():
                done.set_result(None)

        self._flush_acks(closing=True)
        if self.connected:
            self.publish(topics.availability_topic(self._base), OFFLINE, qos=1, retain=True, on_acked=offline_acked)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(done, self._all_acked.wait()), grace)
        self._stopping = True
        if self.connected:
            self._disconnected.clear()
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected.wait(), grace)
        else:
            self._disconnected.set()
        if self._misc is not None:
            self._misc.cancel()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock)
                loop.remove_writer(sock)
