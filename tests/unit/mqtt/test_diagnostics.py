"""The MQTT adapter's pure diagnostics: what a user reads when the broker is not what they think."""

from __future__ import annotations

import logging

import pytest
from paho.mqtt.client import DisconnectFlags
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import MqttConfig
from bridge.mqtt.diagnostics import RefusedPublishes, describe_peer, disconnect_reason, jittered, refusal_hint


@pytest.mark.parametrize(
    ("head", "tls", "expected"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", False,
         "received 'HTTP/1.1 400 Bad Request' — not an MQTT broker"),
        (b"\x15\x03\x03\x00\x02\x02\x46", False, "this is a TLS port: use an mqtts:// URL"),
        (b"\x00\x01\x02\x03", False, "received 00 01 02 03 instead of an MQTT CONNACK"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", False, "received 'SSH-2.0-OpenSSH_9.2' — not an MQTT broker"),
    ],
)
def test_describe_peer_says_what_came_back(head: bytes, tls: bool, expected: str) -> None:
    assert expected in describe_peer(head, tls)


def test_disconnect_reasons_are_human() -> None:
    lost = disconnect_reason(DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"))
    assert lost == "connection lost (the broker or the network closed it)"
    keepalive = disconnect_reason(DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT, "Keep alive timeout"))
    assert "keepalive" in keepalive
    taken = disconnect_reason(DisconnectFlags(True), ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E))
    assert taken == "the broker closed it: Session taken over (0x8E)"


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("Unsupported protocol version", 'mqtt.protocol: auto or "3.1.1"'),
        ("Bad user name or password", "mqtt.username and mqtt.password"),
        ("Not authorized", "mqtt.username and mqtt.password"),
        ("Client identifier not valid", "mqtt.client_id"),
    ],
)
def test_refusals_name_the_setting(name: str, hint: str) -> None:
    assert hint in refusal_hint(ReasonCode(PacketTypes.CONNACK, name), MqttConfig())


def test_jitter_stays_within_20_percent() -> None:
    assert all(0.8 <= jittered(10.0) / 10.0 <= 1.2 for _ in range(200))


def test_a_refused_publish_is_one_warning_a_minute_naming_the_topic(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refused = RefusedPublishes(clock=lambda: now[0])
    denied = ReasonCode(PacketTypes.PUBACK, "Not authorized")
    with caplog.at_level(logging.DEBUG, logger="bridge.mqtt"):
        refused.note("replies/denied", denied)
        now[0] = 30.0
        refused.note(None, denied)
        now[0] = 61.0
        refused.note("replies/denied", denied)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.DEBUG, logging.WARNING]
    assert "replies/denied" in levels[0][1]
    assert "0x87" in levels[0][1]
    assert "(3 refused so far)" in levels[2][1]
