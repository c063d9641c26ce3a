"""What users chose is not lost, and no other client can make the bridge forget it (real broker, real bridge)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from bridge.core import topics
from bridge.sim.behaviours import Behaviour
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import StartBridge
from tests.support.broker import Broker
from tests.support.commands import final_for, finals_by_request, send, settings_of
from tests.support.configs import GUIDS, fresh_guids
from tests.support.probe import Probe
from tests.support.waits import wait_until

DEVICES = {"truck-12": GUIDS[Behaviour.OK], "van-3": GUIDS[Behaviour.OK].upper()}


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


@pytest.fixture
def verbose_broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto that logs every packet (`Denied PUBLISH`, each client's CONNECT)."""
    try:
        broker = Broker(tmp_path / "verbose", extra="log_type all").start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield broker
    broker.stop()


def own_state(probe: Probe, base: str, client_id: str) -> str | None:
    found = [m for m in probe.on_topic(topics.instance_state_topic(base, client_id)) if m.payload]
    return str(found[-1].json()["state"]) if found else None


@pytest.mark.parametrize("size", [2, 3])
def test_shared_group_members_started_together_all_come_online_on_mosquitto(
    start_bridge: StartBridge, verbose_broker: Broker, base_topic: str, cloud: MockCloud, size: int
) -> None:
    cloud.default_behaviour = "ok"
    probe = Probe(verbose_broker.port)
    try:
        probe.subscribe(f"{base_topic}/bridge/#")
        probe.subscribe(f"{base_topic}/+/capture/state")
        for attempt in range(3):
            ids = [f"m{i}-{attempt}-{base_topic}" for i in range(size)]
            started = time.monotonic()
            members = [start_bridge({"mqtt": {"url": verbose_broker.url, "shared_group": f"g{attempt}",
                                              "client_id": client_id}}, wait_online=False)
                       for client_id in ids]
            def all_online(ids: list[str] = ids) -> bool:
                return all(own_state(probe, base_topic, c) == "online" for c in ids)

            def at_the_cloud(guids: list[str]) -> bool:
                return all(cloud.instructions_for(g) for g in guids)

            def answered(wanted: set[str]) -> bool:
                return wanted <= set(finals_by_request(probe, base_topic))

            wait_until(all_online, 15, lambda: "every member online:\n" + verbose_broker.log_text()[-3000:])
            assert time.monotonic() - started < 15
            guids = fresh_guids(4 * size)
            for i, guid in enumerate(guids):
                probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"s{attempt}-{i}"})
            wait_until(partial(at_the_cloud, guids), 15, "every command at the cloud")
            wait_until(partial(answered, {f"s{attempt}-{i}" for i in range(len(guids))}), 10, "every command answered")
            finals = finals_by_request(probe, base_topic)
            assert all(len(finals[f"s{attempt}-{i}"]) == 1 for i in range(len(guids))), finals  # once
            assert all(len(cloud.instructions_for(g)) == 1 for g in guids)  # executed once, by one member
            broker_log = verbose_broker.log_text()
            assert "Denied PUBLISH" not in broker_log  # the probe publishes nothing the broker refuses
            for client_id, member in zip(ids, members, strict=True):
                # One CONNECT per member: no reconnect, seen by the broker and by the bridge.
                assert broker_log.count(f" as {client_id} (") == 1, broker_log[-3000:]
                log = member.log_text()
                assert log.count("connected to") == 1, log
                for said in ("took over", "right after accepting", " ERROR ", " WARNING "):
                    assert said not in log, log
            for member in members:
                assert member.stop() == 0
    finally:
        probe.close()


def test_a_publish_the_broker_denies_is_an_answer_not_a_reconnect(
    start_bridge: StartBridge, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    """Mosquitto's ACL refuses the bridge one Response Topic (MQTT 5 PUBACK 0x87): one WARNING naming it,
    the same connection, and the command's state on its own topic."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {base_topic}/#\ntopic read replies/#\n")
    try:
        broker = Broker(tmp_path / "acl-broker", extra=f"log_type all\nacl_file {acl}").start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    probe = Probe(broker.port)
    try:
        probe.subscribe(f"{base_topic}/truck-12/capture/state")
        client_id = f"acl-{base_topic}"
        bridge = start_bridge({"mqtt": {"url": broker.url, "client_id": client_id}}, wait_online=False)
        wait_until(lambda: "Sending CONNACK to " + client_id in broker.log_text(), 15, "connected")
        wait_until(lambda: f"Received PUBLISH from {client_id}" in broker.log_text(), 15, "online said")
        state = send(probe, base_topic, "truck-12", {"request_id": "denied-reply"}, timeout=20,
                     response_topic="replies/denied")
        assert state["status"] == "ok"
        wait_until(lambda: "Denied PUBLISH from " + client_id in broker.log_text(), 10, "the broker's refusal")
        bridge.wait_log("the broker refused our publish to replies/denied", timeout=10)
        assert send(probe, base_topic, "truck-12", {"request_id": "after"})["status"] == "ok"
        assert broker.log_text().count(f" as {client_id} (") == 1  # no reconnect
        assert bridge.log_text().count("connected to") == 1
        assert "took over" not in bridge.log_text()
    finally:
        probe.close()
        broker.stop()
