"""Home Assistant device-based discovery (pure): one retained config per device, its entities under `components`.

Home Assistant reads it from 2024.11 on. The topic is `<prefix>/device/<node>/<object>/config`:
`<node>` is the bridge's `client_id` (made topic-safe), so one subscription sees exactly this
bridge's configs; `<object>` is the camera's id, or `bridge` for the bridge device (no camera can
be called that). Each component is the per-entity payload of `discovery` without what the device
shares (its device, origin and, where every entity has the same, availability and QoS), so
unique ids and entity ids are the same in both modes and HA's `migrate_discovery` can move an
install from one to the other keeping them and their history.
"""

from __future__ import annotations

import json
from typing import Any

from bridge.config import Config
from bridge.core.devices import safe_id
from bridge.features import discovery

BRIDGE_OBJECT = "bridge"  # one of RESERVED_IDS: no camera can take the bridge device's topic
# What a device's components may share at the root (HA merges these into each component).
SHARED = ("device", "origin", "availability", "qos")
# HA's request to unload an entity but keep its registry entry (ids, history) for another topic.
MIGRATE = b'{"migrate_discovery":true}'


def node_id(client_id: str) -> str:
    """The node level of this bridge's device topics."""
    return safe_id(client_id)


def device_topic(prefix: str, client_id: str, object_id: str) -> str:
    """`<prefix>/device/<node>/<object>/config`."""
    return f"{prefix.strip('/')}/device/{node_id(client_id)}/{object_id}/config"


def camera_topic(config: Config, device: str) -> str:
    """A camera's device config topic."""
    return device_topic(config.homeassistant.prefix, config.mqtt.client_id, safe_id(device))


def cleanup_filter(prefix: str, client_id: str) -> str:
    """Every device config this bridge may have announced (read at start, like the per-entity filter)."""
    return f"{prefix.strip('/')}/device/{node_id(client_id)}/+/config"


def is_device_topic(prefix: str, topic: str) -> bool:
    """A device config topic (rather than a per-entity one) under `prefix`."""
    return topic.startswith(f"{prefix.strip('/')}/device/")


def device_config(parts: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """The device payload for (component, key, per-entity payload) of one device's entities."""
    payloads = [payload for _, _, payload in parts]
    root: dict[str, Any] = {}
    for key in SHARED:
        values = [p.get(key) for p in payloads]
        # Only what every entity has alike: HA would hand a shared key to an entity that has none.
        if all(key in p for p in payloads) and all(v == values[0] for v in values):
            root[key] = values[0]
    components = {
        key: {"platform": component, **{k: v for k, v in payload.items() if k not in root}}
        for component, key, payload in parts
    }
    return {**root, "components": components}


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def camera_message(config: Config, device: str, terminal_num: str | None = None) -> tuple[str, bytes]:
    """(topic, payload) of one camera."""
    entry = config.devices[device]
    parts = [(e.component, e.key, discovery.entity_config(config, device, entry, e, terminal_num))
             for e in discovery.ENTITIES]
    return camera_topic(config, device), _encode(device_config(parts))


def bridge_message(config: Config) -> tuple[str, bytes]:
    """(topic, payload) of the bridge device."""
    parts = [(e.component, e.key, discovery.bridge_entity_config(config, e)) for e in discovery.BRIDGE_ENTITIES]
    topic = device_topic(config.homeassistant.prefix, config.mqtt.client_id, BRIDGE_OBJECT)
    return topic, _encode(device_config(parts))


def device_messages(config: Config, terminals: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs to publish retained with QoS 1; [] when discovery is disabled."""
    if not config.homeassistant.enabled:
        return []
    return [bridge_message(config)] + [
        camera_message(config, device, (terminals or {}).get(device)) for device in config.devices
    ]


def announcement(config: Config, terminals: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
    """What the configured mode (`homeassistant.discovery`) announces."""
    if config.homeassistant.discovery == "device":
        return device_messages(config, terminals)
    return discovery.discovery_messages(config, terminals)


def other_mode_topics(config: Config) -> set[str]:
    """The topics the other mode would announce: found retained, they are migrated, not dropped."""
    if config.homeassistant.discovery == "device":
        return {topic for topic, _ in discovery.discovery_messages(config)}
    return {topic for topic, _ in device_messages(config)}


def camera_announcement(config: Config, device: str, terminal_num: str) -> list[tuple[str, bytes]]:
    """One camera's messages in the configured mode (its serial number changed)."""
    if config.homeassistant.discovery == "device":
        return [camera_message(config, device, terminal_num)]
    return discovery.camera_messages(config, device, terminal_num)


def owner_name(config: Config, payload: bytes) -> str | None:
    """The device name in a retained device config this bridge announced; None when not ours.

    The topic is under our node already; the payload must say so too (our origin, and our bridge
    device or a camera via it), so nothing another program put there is ever cleared.
    """
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("origin"), dict):
        return None
    device = data.get("device")
    if data["origin"].get("name") != discovery.ORIGIN_NAME or not isinstance(device, dict):
        return None
    ours = discovery.bridge_device_block(config)["identifiers"]
    if device.get("identifiers") == ours or device.get("via_device") == ours[0]:
        return str(device.get("name") or device.get("identifiers"))
    return None
