"""What a person is told about the broker, and which topics the bridge may publish to (pure).

Each function turns a broker's answer or a topic into a sentence that names what to fix.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import MqttConfig

log = logging.getLogger("bridge.mqtt")

UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason; paho also reports a 3.1.1 broker's "refused: version" as it


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


class RefusedPublishes:
    """A publish the broker answered with a refusal (MQTT 5 PUBACK >= 0x80, e.g. 0x87 from an ACL).

    It is an answer, not a fault: the connection stays and the message counts as delivered (sending
    it again would be refused again). Said as one WARNING a minute naming the topic, the rest DEBUG.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._warned = -60.0
        self.count = 0

    def note(self, topic: str | None, reason: ReasonCode) -> None:
        """The broker refused our publish to `topic` (None when paho no longer knows it)."""
        self.count += 1
        now = self._clock()
        level = logging.WARNING if now - self._warned >= 60 else logging.DEBUG
        if level == logging.WARNING:
            self._warned = now
        log.log(level, "the broker refused our publish to %s: %s (0x%02X); check its ACL for this client "
                "(%d refused so far)", shown(topic) if topic else "a topic", reason, reason.value, self.count)
