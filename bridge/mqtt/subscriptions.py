"""Subscriptions and their SUBACKs: a refused filter is an error with a hint, retried with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.config import MqttConfig
from bridge.mqtt.diagnostics import jittered

log = logging.getLogger("bridge.mqtt")


class Subscriptions:
    """Subscribes, reads every SUBACK, and records refusals in `problems` (for /healthz)."""

    def __init__(
        self,
        client: paho.Client,
        config: MqttConfig,
        command_filter: str,
        problems: dict[str, str],
        *,
        v5: Callable[[], bool],
        current: Callable[[int], bool],
    ) -> None:
        self._client = client
        self._config = config
        self.command_filter = command_filter
        self._problems = problems
        self._v5 = v5
        self._current = current  # is connection number N still the one we have?
        self._pending: dict[int, str] = {}  # SUBSCRIBE mid -> filter, until its SUBACK
        self._delay: dict[str, float] = {}

    @property
    def pending(self) -> bool:
        """Some SUBSCRIBE has no SUBACK yet."""
        return bool(self._pending)

    def reset(self) -> None:
        """A new connection or a lost one: no SUBACK will come for what was asked before."""
        self._pending.clear()

    def commands(self) -> None:
        """Subscribe to the command filter."""
        if self._v5():
            # Retain-as-published: a command published with retain=true is seen as retained even
            # while we are connected, so it is never executed (it would re-fire on every restart).
            self.subscribe(self.command_filter, SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            self.subscribe(self.command_filter, 1)

    def subscribe(self, topic: str, options: int | SubscribeOptions) -> None:
        """Subscribe and expect a SUBACK for it."""
        if isinstance(options, SubscribeOptions):
            rc, mid = self._client.subscribe(topic, options=options)
        else:
            rc, mid = self._client.subscribe(topic, qos=options)
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._pending[mid] = topic

    def suback(
        self, mid: int, reasons: list[ReasonCode], connection: int, resubscribe: Callable[[str], None]
    ) -> str | None:
        """paho's on_subscribe: the filter granted now, or None (refused: retried later, or not ours)."""
        topic = self._pending.pop(mid, None)
        if topic is None or not reasons:
            return None
        reason = reasons[0]
        if reason.is_failure:
            self._refused(topic, reason, connection, resubscribe)
            return None
        self._delay.pop(topic, None)
        if self._problems.pop(topic, None) is not None:
            log.info("the broker granted the subscription to %s now", topic)
        else:
            log.debug("subscribed to %s (%s)", topic, reason)
        return topic

    def _refused(self, topic: str, reason: ReasonCode, connection: int, resubscribe: Callable[[str], None]) -> None:
        delay = self._delay.get(topic, self._config.reconnect_min)
        pause = jittered(delay)
        self._delay[topic] = min(delay * 2, self._config.reconnect_max)
        why = f"the broker refused the subscription to {topic}: {reason} (0x{reason.value:02X})"
        self._problems[topic] = why
        commands = topic == self.command_filter
        if commands and self._config.shared_group:
            hint = "the broker may not support shared subscriptions: try without mqtt.shared_group"
        elif commands:
            hint = "no command reaches the bridge until the broker's ACL lets this client read it"
        else:
            hint = "check the broker's ACL"
        log.error("%s; %s; next try in %.1fs", why, hint, pause)

        def again() -> None:
            if self._current(connection):  # a new connection subscribes afresh
                resubscribe(topic)

        asyncio.get_running_loop().call_later(pause, again)
