"""Routing: which handler a received message goes to, and how a message on `capture/set` becomes a Command.

Features register `Route`s; the adapter knows no feature's topics.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable

import paho.mqtt.client as paho

from bridge.core import topics
from bridge.core.command import request_id_of
from bridge.core.messages import Command, Route
from bridge.mqtt.diagnostics import shown

log = logging.getLogger("bridge.mqtt")

class Router:
    """Exact topics first, then filters, each in registration order."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._forgotten = [r.topic for r in routes if not r.listen]
        routes = [r for r in routes if r.listen]
        self._exact = {r.topic: r for r in routes if not _is_filter(r.topic)}
        self._filters = [r for r in routes if _is_filter(r.topic)]

    def subscriptions(self) -> list[str]:
        """What to subscribe to on every connection (QoS 1)."""
        return [*self._exact, *(r.topic for r in self._filters)]

    def unsubscriptions(self) -> list[str]:
        """What to unsubscribe from on every connection: left in the session by an older version."""
        return self._forgotten

    def match(self, topic: str) -> Route | None:
        """The route for `topic`, or None (then it may be a command)."""
        found = self._exact.get(topic)
        if found is not None:
            return found
        for route in self._filters:
            if paho.topic_matches_sub(route.topic, topic):
                return route
        return None


def _is_filter(topic: str) -> bool:
    return "+" in topic or "#" in topic


def live_command(
    message: paho.MQTTMessage, topic: str, device: str, on_retained: Callable[[str, bytes], None] | None
) -> Command | None:
    """A message on `<base>/<device>/capture/set` as a Command; None when it is never executed."""
    if not message.payload:
        # How a retained command is cleared (`mosquitto_pub -r -n`); 3.1.1 delivers the clearing
        # as a live empty message. It is no command, and must not overwrite the last real state.
        log.debug("ignored an empty message on %s (the clearing of a retained command)", topic,
                  extra={"device": device})
        return None
    if message.retain:
        # A retained command is stale: a restart must not fire old captures.
        log.warning("ignored a retained command on %s (retained commands are never executed)", topic,
                    extra={"device": device})
        if on_retained is not None:
            on_retained(device, bytes(message.payload))
        return None
    return command_of(message, topic, device)


def command_of(message: paho.MQTTMessage, topic: str, device: str) -> Command:
    """A live, non-empty message on `<base>/<device>/capture/set` as a Command."""
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
    return Command(sys.intern(device), payload, response_topic, correlation, bool(message.dup))


def empty_device(topic: str, base: str) -> bool:
    """A command topic with no device id in it (`<base>//capture/set`)."""
    return topic == topics.command_topic(base, "")
