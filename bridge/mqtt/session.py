"""The connection: connect, read the CONNACK, fall back from MQTT 5 to 3.1.1, back off, spot takeovers.

What the broker says is read, not assumed: the CONNACK (a refusal of MQTT 5 makes `protocol:
auto` fall back to 3.1.1), the first bytes of a peer that is not an MQTT broker at all, and the
reason of every disconnect (a session taken over by another client with our client_id is named
as such). Reconnects are ours: exponential backoff, longer after the broker refuses us.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import MqttConfig
from bridge.mqtt.diagnostics import UNSUPPORTED_PROTOCOL, describe_peer, disconnect_reason, jittered, refusal_hint
from bridge.mqtt.inbound import RECEIVE_MAXIMUM
from bridge.mqtt.loop import Client

log = logging.getLogger("bridge.mqtt")

CONNACK = 0x20  # first byte of the only packet an MQTT broker sends first
SESSION_TAKEN_OVER = 0x8E  # DISCONNECT reason: another connection with our client_id took the session


class Session:
    """Keeps one connection up until `stop()`; knows why the last attempt failed."""

    def __init__(self, client: Client, config: MqttConfig, max_packet: int | None) -> None:
        self._client = client
        self._config = config
        self._max_packet = max_packet
        self.auto = config.protocol == "auto"
        # auto starts with MQTT 5 and falls back to 3.1.1 when the broker refuses it.
        self.v5 = config.protocol != "3.1.1"
        self.fell_back = False
        self.connected = False
        self.connect_count = 0
        self.stopping = False
        self.disconnected = asyncio.Event()
        self.last_error: str | None = "not connected yet"
        self._answered = asyncio.Event()  # a CONNACK came, accepting or refusing
        self._refused: str | None = None
        self._refused_code: int | None = None
        self._peer: str | None = None  # what a peer that is no MQTT broker sent
        self._silent = False  # the last attempt got no answer at all within connect_timeout
        self._connect_error: str | None = None  # why it failed before the broker answered (TLS alert, ...)
        self._connected_at = 0.0
        self.drop_reason: str | None = None
        self._taken_over = False
        self._drop_lost = False  # the last drop was a lost connection, not a DISCONNECT from the broker
        self._short_drops = 0
        self._takeover_named = False  # the takeover ERROR is said once per run

    def current(self, connection: int) -> bool:
        """Connection number `connection` is still up (timers of an older one do nothing)."""
        return self.connected and connection == self.connect_count and not self.stopping

    # --- connecting -----------------------------------------------------------------

    def _connect_blocking(self) -> None:
        cfg = self._config
        properties: Properties | None = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self.v5:
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
        self._client.on_log = note_error
        self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=clean_start,
                             properties=properties)

    async def _await_connack(self) -> None:
        # paho would wait a whole keepalive (60 s) for a CONNACK that a non-MQTT port never sends.
        answered = asyncio.ensure_future(self._answered.wait())
        dropped = asyncio.ensure_future(self.disconnected.wait())
        try:
            await asyncio.wait({answered, dropped}, timeout=self._config.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
            dropped.cancel()
        if not self._answered.is_set() and not self.disconnected.is_set():
            self._silent = True
            self._peer = (f"received nothing within {self._config.connect_timeout:g}s of our MQTT CONNECT — "
                          "not an MQTT broker, or a TLS port (use an mqtts:// URL)")
            self._client.fail(paho.MQTT_ERR_PROTOCOL)

    def peer_is_mqtt(self) -> bool:
        """Before the CONNACK, peek at what the peer sent: an HTTP server or a TLS port answers
        with bytes paho would misparse into a confusing error much later."""
        if self._answered.is_set():
            return True
        sock = self._client.socket()
        if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
            return True
        try:
            head = sock.recv(64, socket.MSG_PEEK)
        except OSError:  # BlockingIOError and the rest: paho's own read reports it
            return True
        if not head or head[0] == CONNACK:
            return True
        self._peer = describe_peer(head, self._config.tls)
        self._client.fail(paho.MQTT_ERR_PROTOCOL)
        return False

    def use_protocol(self, v5: bool) -> None:
        """Speak MQTT 5 (or 3.1.1) from the next connect on."""
        self.v5 = v5
        self._client.switch_protocol(v5, clean_session=not self._config.persistent_session)

    # --- paho callbacks -------------------------------------------------------------

    def connack(self, flags: Any, reason: ReasonCode) -> bool:
        """The broker answered our CONNECT; True when it accepted it."""
        self._client.on_log = None  # stop formatting paho's per-packet log lines (see _connect_blocking)
        self._answered.set()
        cfg = self._config
        if reason.is_failure:
            self._refused, self._refused_code = str(reason), reason.value
            if reason.value == UNSUPPORTED_PROTOCOL and self.v5 and self.auto:
                log.info("broker %s:%d does not speak MQTT 5 (%s); trying MQTT 3.1.1", cfg.host, cfg.port, reason)
                return False
            hint = refusal_hint(reason, cfg)
            self.last_error = f"broker {cfg.host}:{cfg.port} refused the connection: {reason}{hint}"
            log.error("%s", self.last_error)
            return False
        self._refused = self._refused_code = None
        self.last_error = None
        self.connected = True
        self.connect_count += 1
        self._connected_at = time.monotonic()
        session = "resumed" if getattr(flags, "session_present", False) else "new"
        version = "5" if self.v5 else "3.1.1"
        how = ""
        if self.auto:
            how = ", auto: the broker refused MQTT 5" if self.fell_back else ", auto"
        log.info("connected to %s:%d (MQTT %s%s; %s session; client_id %s)", cfg.host, cfg.port, version, how,
                 session, cfg.client_id)
        return True

    def dropped(self, flags: Any, reason: ReasonCode) -> None:
        """paho's on_disconnect: remember why (the next attempt's log says it)."""
        was_connected, self.connected = self.connected, False
        if was_connected and not self.stopping:
            self.drop_reason = disconnect_reason(flags, reason)
            self._taken_over = getattr(reason, "value", None) == SESSION_TAKEN_OVER
            self._drop_lost = not getattr(flags, "is_disconnect_packet_from_server", False)
            self.last_error = f"disconnected from the broker: {self.drop_reason}"

    # --- the reconnect loop ---------------------------------------------------------

    async def run(self) -> None:
        """Connect and stay connected until `stop()`; reconnect with backoff."""
        loop = asyncio.get_running_loop()
        delay = self._config.reconnect_min
        said = [False]  # the short-drop WARNING is said once per streak
        while not self.stopping:
            self._reset_attempt()
            accepted = self.connect_count
            pause = jittered(delay)
            try:
                await loop.run_in_executor(None, self._connect_blocking)
            except (OSError, ssl.SSLError, ValueError) as exc:
                cfg = self._config
                self.last_error = f"cannot reach broker {cfg.host}:{cfg.port}: {exc}"
                log.warning("%s; next try in %.1fs", self.last_error, pause)
            else:
                await self._await_connack()
                await self.disconnected.wait()
                if self.stopping:
                    break
                if self.connect_count > accepted:
                    if not self._was_taken_over(delay, pause, said):
                        delay = self._config.reconnect_min
                        pause = jittered(delay)
                        log.warning("disconnected from the broker: %s; reconnecting in %.1fs", self.drop_reason, pause)
                elif self._switch_protocol(pause):
                    continue
            await asyncio.sleep(pause)
            if self.connect_count == accepted or self._taken_over or self._short_drops >= 2:
                delay = min(delay * 2, self._config.reconnect_max)

    def _reset_attempt(self) -> None:
        self.disconnected.clear()
        self._answered.clear()
        self._refused = self._refused_code = None
        self._peer = None
        self._silent = False
        self.drop_reason = None
        self._taken_over = self._drop_lost = False

    def _switch_protocol(self, pause: float) -> bool:
        """After an attempt the broker did not accept: True to try the other MQTT version at once."""
        if (self._refused_code == UNSUPPORTED_PROTOCOL and self.v5 and self.auto) or (
            self._refused is None and self._closed_early(pause)
        ):
            self.fell_back = True
            self.use_protocol(False)
            return True
        if self._refused is None and self.auto and self.fell_back and (self._peer is None or self._silent):
            # 3.1.1 was closed too: not a protocol matter after all; MQTT 5 again next time.
            self.fell_back = False
            self.use_protocol(True)
        return False

    def _closed_early(self, pause: float) -> bool:
        """After a close without CONNACK: log why; True when MQTT 3.1.1 should be tried at once."""
        cfg = self._config
        where = f"broker {cfg.host}:{cfg.port}"
        if self._silent and self.v5 and self.auto:
            # Some brokers (amqtt 0.12) never answer an MQTT 5 CONNECT at all.
            log.info("%s did not answer an MQTT 5 CONNECT within %gs; trying MQTT 3.1.1", where, cfg.connect_timeout)
            return True
        if self._peer is not None:
            self.last_error = f"{where}: {self._peer}"
        elif self.v5 and self.auto:
            log.info("%s closed the connection without answering an MQTT 5 CONNECT; trying MQTT 3.1.1", where)
            return True
        elif self.v5:
            self.last_error = (f"{where} closed the connection without answering an MQTT 5 CONNECT: "
                               f"{self._connect_error or 'no reason given'} (if the broker only speaks 3.1.1, "
                               "set mqtt.protocol: auto or \"3.1.1\")")
        else:
            hint = ""
            if cfg.tls and cfg.cert_file is None:
                hint = " (if the broker requires a client certificate, set mqtt.cert_file and mqtt.key_file)"
            elif not cfg.tls:
                hint = " (check the port; a TLS port needs an mqtts:// URL)"
            self.last_error = (f"{where} closed the connection before accepting it: "
                               f"{self._connect_error or 'no reason given'}{hint}")
        log.error("%s; next try in %.1fs", self.last_error, pause)
        return False

    def _was_taken_over(self, delay: float, pause: float, said: list[bool]) -> bool:
        """After a drop of an accepted connection: True (and logged) when it looks like a takeover.

        Only the broker's own word (MQTT 5 reason 0x8E) names a takeover here; Mosquitto 2.0 just
        closes the socket, so `another_instance` names one when our instance topic proves it. Two lost
        connections in a row, each soon after a successful connect, are only said to be short, and
        backed off ("soon": before another instance's backoff would bring it back).
        """
        lived = time.monotonic() - self._connected_at
        if not self._taken_over:
            if self._drop_lost and lived < max(5.0, 2.5 * delay):
                self._short_drops += 1
            else:
                self._short_drops = 0
        if not (self._taken_over or self._short_drops >= 2):
            said[0] = False
            return False
        if self._taken_over:
            self._name_takeover(f"the broker says another client connected with client_id {self._config.client_id!r} "
                                "and took over the session", pause)
        elif not said[0]:
            log.warning("the broker closed the connection right after accepting it, twice in a row (its log says "
                        "why); next try in %.1fs", pause)
        else:
            log.debug("closed right after connecting again; next try in %.1fs", pause)
        said[0] = True
        # Keep backing off: resetting would fight another instance once a second forever.
        return True

    def another_instance(self, evidence: str) -> None:
        """Proof that another client connects with our client_id (our own instance topic says so)."""
        self._name_takeover(f"another client connected with client_id {self._config.client_id!r} and took over "
                            f"the session ({evidence})", None)

    def _name_takeover(self, what: str, pause: float | None) -> None:
        if self._takeover_named:
            log.warning("session taken over again (client_id %r)", self._config.client_id)
            return
        self._takeover_named = True
        then = "" if pause is None else f"; next try in {pause:.1f}s"
        log.error("%s; every bridge instance needs its own mqtt.client_id (to share the work, give each its own "
                  "client_id and the same mqtt.shared_group)%s", what, then)
