"""The session's takeover diagnosis: named only on proof, once per run."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import MqttConfig
from bridge.mqtt.session import Session


def session() -> Session:
    client: Any = SimpleNamespace(on_log=None)  # the diagnosis touches nothing of paho's
    return Session(client, MqttConfig(client_id="twin"), None)


def test_proof_of_another_instance_is_one_error_naming_the_client_id(caplog: pytest.LogCaptureFixture) -> None:
    s = session()
    with caplog.at_level(logging.DEBUG, logger="bridge.mqtt"):
        s.another_instance("another process wrote d/bridge/instance/twin/state after this one (100% sure)")
        s.another_instance("again")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "client_id 'twin'" in errors[0]
    assert "took over the session" in errors[0]
    assert "100% sure" in errors[0]
    assert "own mqtt.client_id" in errors[0]
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]


class Flags:
    is_disconnect_packet_from_server = False


def test_short_lived_connections_alone_are_a_warning_not_a_takeover(caplog: pytest.LogCaptureFixture) -> None:
    s = session()
    said = [False]
    with caplog.at_level(logging.DEBUG, logger="bridge.mqtt"):
        for _ in range(3):  # accepted, then closed by the peer at once (a denied publish, a takeover...)
            s.connack(Flags(), ReasonCode(PacketTypes.CONNACK, "Success"))
            s.dropped(Flags(), ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"))
            backs_off = s._was_taken_over(1.0, 1.0, said)
    assert backs_off
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if "took over" in r.getMessage()]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "right after accepting it" in warnings[0]
