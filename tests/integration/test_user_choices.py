"""What users chose is not lost, and no other client can make the bridge forget it (real broker, real bridge)."""

from __future__ import annotations

import uuid
from typing import Any

from bridge.core import topics
from bridge.sim.behaviours import Behaviour
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import StartBridge
from tests.support.broker import Broker
from tests.support.commands import is_online
from tests.support.configs import GUIDS
from tests.support.probe import Probe, Received
from tests.support.waits import wait_until

DEVICES = {"truck-12": GUIDS[Behaviour.OK], "van-3": GUIDS[Behaviour.OK].upper()}


def final_for(base: str, device: str, request_id: str) -> Any:
    def check(m: Received) -> bool:
        return (m.topic == f"{base}/{device}/capture/state" and bool(m.payload) and not m.retain
                and m.json().get("request_id") == request_id and m.json()["status"] != "pending")
    return check


def settings_of(probe: Probe, base: str, device: str) -> dict[str, Any]:
    found = [m for m in probe.on_topic(f"{base}/{device}/capture/settings") if m.payload]
    return dict(found[-1].json()) if found else {}


def test_a_change_and_a_forged_marker_while_the_bridge_is_down_lose_nothing_over_two_restarts(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    overrides = {"devices": DEVICES}
    bridge = start_bridge(overrides)
    for device in DEVICES:
        probe.subscribe(f"{base_topic}/{device}/capture/settings")
        probe.subscribe(f"{base_topic}/{device}/capture/state")
    probe.publish(topics.settings_set_topic(base_topic, "truck-12"), {"resolution": "1080p"})
    probe.publish(topics.settings_set_topic(base_topic, "van-3"), {"count": 4})
    wait_until(lambda: settings_of(probe, base_topic, "truck-12").get("resolution") == "1080p"
               and settings_of(probe, base_topic, "van-3").get("count") == 4, 10, "both settings shown")
    assert bridge.stop() == 0

    # While it is down: a user changes one select (QoS 1, queued for the bridge's session), a
    # hostile client forges the start-up marker, and a capture waits.
    client_id = f"bridge-{base_topic}"
    probe.publish(topics.bridge_sync_topic(base_topic, client_id), b"sync")
    probe.publish(topics.settings_set_topic(base_topic, "truck-12"), {"interval": 5})
    probe.publish(f"{base_topic}/van-3/capture/set", {"request_id": "queued"})
    bridge = start_bridge(overrides)
    state = probe.wait_for(final_for(base_topic, "van-3", "queued"), timeout=20)[-1].json()
    assert state["request"]["FCount"] == 4  # the remembered setting, not the built-in 1
    wait_until(lambda: settings_of(probe, base_topic, "truck-12").get("interval") == 5, 10, "the queued change")
    assert settings_of(probe, base_topic, "truck-12")["resolution"] == "1080p"  # on top, not instead
    assert "ignored a message on" in bridge.log_text()  # the forged marker

    for restart in range(2):
        assert bridge.stop() == 0
        bridge = start_bridge(overrides)
        for device, request_id in (("truck-12", f"t{restart}"), ("van-3", f"v{restart}")):
            probe.publish(f"{base_topic}/{device}/capture/set", {"request_id": request_id})
        truck = probe.wait_for(final_for(base_topic, "truck-12", f"t{restart}"), timeout=20)[-1].json()
        van = probe.wait_for(final_for(base_topic, "van-3", f"v{restart}"), timeout=20)[-1].json()
        assert (truck["request"]["FResolution"], truck["request"]["FInterval"]) == (3, 5)
        assert van["request"]["FCount"] == 4


def test_shared_group_members_started_together_all_come_online_on_mosquitto(
    start_bridge: StartBridge, probe: Probe, base_topic: str, broker: Broker, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    probe.subscribe(f"{base_topic}/bridge/state")
    for attempt in range(3):
        group = f"g{attempt}"
        online_before = sum(1 for m in probe.messages if is_online(base_topic)(m))
        members = [
            start_bridge({"mqtt": {"shared_group": group, "client_id": f"m{i}-{attempt}-{base_topic}"}},
                         wait_online=False)
            for i in range(3)
        ]
        def all_online(wanted: int = online_before + 3) -> bool:
            return sum(1 for m in probe.messages if is_online(base_topic)(m)) >= wanted

        wait_until(all_online, 20, "three members online")
        for member in members:
            log = member.log_text()
            assert log.count("connected to") == 1, log  # no reconnect loop
            assert "took over the session" not in log
            assert "ERROR" not in log, log
        guids = [str(uuid.uuid4()) for _ in range(9)]
        probe.subscribe(f"{base_topic}/+/capture/state")
        for i, guid in enumerate(guids):
            probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"s{attempt}-{i}"})
        def all_at_the_cloud(sent: list[str] = guids) -> bool:
            return all(cloud.instructions_for(g) for g in sent)

        wait_until(all_at_the_cloud, 15, "every command at the cloud")
        assert all(len(cloud.instructions_for(g)) == 1 for g in guids)  # answered once, by one member
        for member in members:
            member.stop()
