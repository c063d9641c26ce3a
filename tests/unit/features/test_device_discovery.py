"""Device-based discovery: one config per device whose components are the per-entity configs, shared parts once."""

from __future__ import annotations

import json
from typing import Any

import paho.mqtt.client as paho

from bridge.core.devices import RESERVED_IDS, safe_id
from bridge.features import device_discovery, discovery
from tests.support.fakes import GUID, GUID2
from tests.support.features import config_of

DEVICE = {"discovery": "device"}


def merged(device_payload: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """unique_id -> (platform, config) as Home Assistant builds each component: shared keys merged in."""
    shared = {k: v for k, v in device_payload.items() if k != "components"}
    result = {}
    for config in device_payload["components"].values():
        component = {k: v for k, v in config.items() if k != "platform"}
        result[config["unique_id"]] = (config["platform"], {**shared, **component})
    return result


def test_each_component_is_the_per_entity_config_with_the_shared_parts_sent_once() -> None:
    config = config_of({"truck-12": {"guid": GUID, "name": "Truck 12"}, "van-3": GUID2}, homeassistant=DEVICE)
    per_entity = {}
    for topic, payload in discovery.discovery_messages(config):
        per_entity[json.loads(payload)["unique_id"]] = (topic.split("/")[1], json.loads(payload))
    rebuilt = {}
    for _, payload in device_discovery.device_messages(config):
        rebuilt.update(merged(json.loads(payload)))
    # Same unique ids, entity ids (object_id, default_entity_id) and every other key: a migration keeps them.
    assert rebuilt == per_entity


def test_a_camera_shares_device_origin_availability_and_qos_the_bridge_not_its_availability() -> None:
    config = config_of({"truck-12": GUID}, homeassistant=DEVICE)
    bridge, truck = device_discovery.device_messages(config)
    camera = json.loads(truck[1])
    assert sorted(camera) == ["availability", "components", "device", "origin", "qos"]
    assert all(not {"device", "origin", "availability", "qos"} & set(c) for c in camera["components"].values())
    bridge_payload = json.loads(bridge[1])
    # Connection has no availability (it shows the bridge down as off): shared, HA would hand it one.
    assert "availability" not in bridge_payload
    assert "availability" not in bridge_payload["components"]["connection"]
    assert "availability" in bridge_payload["components"]["version"]
    assert bridge[0] == "homeassistant/device/capture-bridge/bridge/config"


def test_topics_sit_under_the_client_id_and_match_the_cleanup_filter() -> None:
    base = config_of({"truck 12": GUID}, homeassistant={**DEVICE, "prefix": "ha/"})
    config = base.model_copy(update={"mqtt": base.mqtt.model_copy(update={"client_id": "site a/1"})})
    topics = [t for t, _ in device_discovery.device_messages(config)]
    node = safe_id("site a/1")
    assert node.startswith("site_a_1_")  # topic-safe, and distinct from a client_id "site_a_1"
    assert topics[0] == f"ha/device/{node}/bridge/config"
    assert topics[1].startswith(f"ha/device/{node}/truck_12_")
    filt = device_discovery.cleanup_filter("ha", config.mqtt.client_id)
    assert all(paho.topic_matches_sub(filt, t) for t in topics)
    assert not paho.topic_matches_sub(filt, "ha/device/capture-bridge/bridge/config")  # another bridge
    assert all(device_discovery.is_device_topic("ha", t) for t in topics)
    assert not device_discovery.is_device_topic("ha", "ha/button/capture_bridge/x/config")
    assert device_discovery.BRIDGE_OBJECT in RESERVED_IDS  # no camera can take the bridge device's topic


def test_one_message_per_camera_about_half_the_bytes() -> None:
    devices = {f"cam-{i}": GUID for i in range(10)}
    config = config_of(devices, homeassistant=DEVICE)
    per_entity = discovery.discovery_messages(config)
    device = device_discovery.device_messages(config)
    assert (len(per_entity), len(device)) == (4 + 14 * 10, 1 + 10)
    assert sum(len(p) for _, p in device) < 0.6 * sum(len(p) for _, p in per_entity)


def test_the_mode_chooses_the_announcement() -> None:
    device = config_of(None, homeassistant=DEVICE)
    entity = config_of(None, homeassistant={"discovery": "entity"})
    assert device_discovery.announcement(device) == device_discovery.device_messages(device)
    assert device_discovery.announcement(entity) == discovery.discovery_messages(entity)
    assert device_discovery.other_mode_topics(device) == {t for t, _ in discovery.discovery_messages(device)}
    assert device_discovery.other_mode_topics(entity) == {t for t, _ in device_discovery.device_messages(entity)}
    assert config_of(None).homeassistant.discovery == "device"  # the default
    off = config_of(None, homeassistant={"enabled": False})
    assert device_discovery.announcement(off) == []


def test_owner_name_takes_only_this_bridges_configs() -> None:
    config = config_of({"truck-12": {"guid": GUID, "name": "Truck 12"}}, homeassistant=DEVICE)
    (_, bridge), (_, truck) = device_discovery.device_messages(config)
    assert device_discovery.owner_name(config, truck) == "Truck 12"
    assert device_discovery.owner_name(config, bridge) == "capture-bridge"
    data = json.loads(truck)
    broken: Any
    for broken in ({**data, "origin": {"name": "other"}}, {**data, "origin": "capture-bridge"},
                   {**data, "device": {**data["device"], "via_device": "someone"}}, [data], {"device": {}}):
        assert device_discovery.owner_name(config, json.dumps(broken).encode()) is None
    assert device_discovery.owner_name(config, b"{" * 100_000) is None
