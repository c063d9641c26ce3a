"""Result topics through a real broker: one non-retained final state per command with a request_id."""

from __future__ import annotations

import time
from typing import Any

from paho.mqtt.enums import MQTTProtocolVersion

from bridge.sim.server import MockCloud
from tests.support import commands
from tests.support.asyncapi import validator
from tests.support.bridge_proc import StartBridge
from tests.support.broker import Broker
from tests.support.probe import Probe


def test_every_command_with_a_request_id_gets_exactly_one_result(
    start_bridge: StartBridge, broker: Broker, base_topic: str, cloud: MockCloud
) -> None:
    start_bridge({"mqtt": {"result_topics": True}, "bridge": {"publish_pending": True}})
    client = Probe(broker.port, protocol=MQTTProtocolVersion.MQTTv311)  # as ThingsBoard's gateway speaks
    try:
        client.subscribe(f"{base_topic}/+/capture/result/#")
        client.subscribe(f"{base_topic}/+/capture/state")
        cloud.latency = 0.3
        sent: dict[str, tuple[str, dict[str, Any]]] = {
            "ok-1": ("truck-12", {"request_id": "ok-1"}),
            "ok-2": ("truck-12", {"request_id": "ok-2"}),  # waits behind ok-1: a pending state first
            "bad": ("truck-12", {"request_id": "bad", "count": 0}),
            "nobody": ("no-such-device", {"request_id": "nobody"}),
            "a/b+c": ("truck-12", {"request_id": "a/b+c"}),
        }
        for device, payload in sent.values():
            client.publish(f"{base_topic}/{device}/capture/set", payload)
        client.wait_for(lambda m: "/capture/result/" in m.topic, count=len(sent), timeout=15)
        time.sleep(1.0)  # ok: proving that no second result follows
        results = [m for m in client.messages if "/capture/result/" in m.topic]
        by_topic = {m.topic: m for m in results}
        assert len(results) == len(sent)  # exactly one each
        assert all(not m.retain for m in results)
        assert by_topic[f"{base_topic}/truck-12/capture/result/ok-1"].json()["status"] == "ok"
        assert by_topic[f"{base_topic}/truck-12/capture/result/ok-2"].json()["status"] == "ok"
        assert by_topic[f"{base_topic}/truck-12/capture/result/bad"].json()["error"] == "invalid_payload"
        assert by_topic[f"{base_topic}/no-such-device/capture/result/nobody"].json()["error"] == "unknown_device"
        escaped = by_topic[f"{base_topic}/truck-12/capture/result/a%2Fb%2Bc"].json()
        assert escaped["request_id"] == "a/b+c"
        # What the wire carried is what docs/asyncapi.yaml describes, pending states included.
        seen = [m for m in client.messages if "/capture/" in m.topic and m.payload]
        for message in seen:
            validator("state").validate(message.json())
        assert any(m.json()["status"] == "pending" for m in seen)
    finally:
        client.close()


def test_no_result_topics_unless_asked_for(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    start_bridge()
    probe.subscribe(f"{base_topic}/+/capture/result/#")
    state = commands.send(probe, base_topic, "truck-12", {"request_id": "r-1"})
    assert state["status"] == "ok"
    assert [m for m in probe.messages if "/capture/result/" in m.topic] == []
