"""Device-based Home Assistant discovery through a real broker: one config per camera, the migration of an
existing per-entity install, and the clean-up of removed cameras that leaves other programs' configs alone."""

from __future__ import annotations

import json
import uuid
from typing import Any

from bridge.sim.behaviours import Behaviour
from tests.support.bridge_proc import StartBridge
from tests.support.broker import Broker
from tests.support.configs import GUIDS
from tests.support.probe import Probe, Received

MIGRATE = {"migrate_discovery": True}
DEVICES = {"truck-12": {"guid": GUIDS[Behaviour.OK], "name": "Truck 12"}, "van-3": GUIDS[Behaviour.BUSY]}


def ha(prefix: str, mode: str) -> dict[str, Any]:
    return {"enabled": True, "prefix": prefix, "status_topic": f"{prefix}/status", "discovery": mode}


def retained(broker: Broker, prefix: str, settle_on: int) -> dict[str, bytes]:
    """What the broker keeps under `prefix`, read by a fresh client (it only gets retained copies)."""
    fresh = Probe(broker.port)
    try:
        fresh.subscribe(f"{prefix}/#")
        found = fresh.wait_for(lambda m: m.retain, count=settle_on, timeout=10)
        return {m.topic: m.payload for m in found}
    finally:
        fresh.close()


def test_an_existing_per_entity_install_migrates_to_device_discovery(
    start_bridge: StartBridge, probe: Probe, broker: Broker
) -> None:
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    probe.subscribe(f"{prefix}/#")
    old = start_bridge({"homeassistant": ha(prefix, "entity"), "devices": DEVICES})
    cameras = len(old.config["devices"])
    old_configs = probe.wait_for(lambda m: m.topic.endswith("/config") and bool(m.payload), count=4 + 14 * cameras)
    old_topics = {m.topic for m in old_configs}
    old_ids = {m.json()["unique_id"] for m in old_configs}
    old.stop()
    mark = len(probe.messages)

    start_bridge({"homeassistant": ha(prefix, "device"), "devices": DEVICES})

    def after(m: Received) -> bool:
        return m in probe.messages[mark:]

    probe.wait_for(lambda m: after(m) and m.topic in old_topics and not m.payload, count=len(old_topics), timeout=30)
    since = probe.messages[mark:]
    migrates = [i for i, m in enumerate(since) if m.topic in old_topics and m.payload and m.json() == MIGRATE]
    devices = [i for i, m in enumerate(since) if "/device/" in m.topic and m.payload]
    clears = [i for i, m in enumerate(since) if m.topic in old_topics and not m.payload]
    # HA's documented order: every migrate request, then the device configs, then the old topics cleared.
    assert len(migrates) == len(old_topics)
    device_topics = {since[i].topic for i in devices}
    assert len(device_topics) == len(devices) == 1 + cameras  # the bridge and each camera, once
    assert max(migrates) < min(devices)
    assert max(devices) < min(clears)

    kept = retained(broker, prefix, settle_on=len(device_topics))
    assert set(kept) == device_topics
    assert all(json.loads(p) != MIGRATE for p in kept.values())  # no migrate request left behind
    new_ids = {c["unique_id"] for p in kept.values() for c in json.loads(p)["components"].values()}
    assert new_ids == old_ids  # the same entities in HA: entity ids and history stay


def test_removed_cameras_leave_and_other_programs_configs_stay(
    start_bridge: StartBridge, probe: Probe, broker: Broker
) -> None:
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    probe.subscribe(f"{prefix}/#")
    first = start_bridge({"homeassistant": ha(prefix, "device"), "devices": DEVICES})
    announced = probe.wait_for(lambda m: m.topic.endswith("/van-3/config") and bool(m.payload))
    van, van_config = announced[0].topic, announced[0].json()
    node = van.split("/")[2]  # the bridge's client_id
    before = {m.topic for m in probe.messages if m.topic.startswith(f"{prefix}/device/") and m.payload}
    # Another program's config under the same node: not announced by this bridge (its own origin).
    stranger_topic = f"{prefix}/device/{node}/other/config"
    stranger = {**van_config, "origin": {"name": "someone-else"}}
    probe.publish(stranger_topic, stranger, retain=True)
    first.stop()

    start_bridge({"homeassistant": ha(prefix, "device"), "devices": {"truck-12": DEVICES["truck-12"]}})
    probe.wait_for(lambda m: m.topic == van and not m.payload, timeout=15)
    kept = retained(broker, prefix, settle_on=len(before))
    assert set(kept) == (before - {van}) | {stranger_topic}
    assert json.loads(kept[stranger_topic]) == stranger
