"""Home Assistant MQTT discovery (pure): the config messages that make every device appear in HA.

For each device under `devices` we announce three entities, one discovery
message each, on `<prefix>/<component>/capture_bridge/<object_id>/config`:

- button "Take photo"   -> publishes `{"type":"photo"}` on `<base>/<id>/capture/set`
- button "Record video" -> publishes `{"type":"video"}` on `<base>/<id>/capture/set`
- sensor "Last capture" -> `status` of `<base>/<id>/capture/state`, the whole state as attributes

All three share one HA device and go unavailable with the bridge
(`<base>/bridge/state`). Publish the messages retained with QoS 1, and again
when HA announces itself on `homeassistant.status_topic`. (The bridge does not
delete entities of devices removed from the config: clear their retained config
topics by hand, or delete the device in HA.)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from bridge import __version__, topics
from bridge.config import Config, DeviceEntry

NODE_ID = "capture_bridge"
ORIGIN_NAME = "capture-bridge"
# Shown by HA as the origin's support link; None until the project has a public home.
SUPPORT_URL: str | None = None
# The cloud is AssetsControls' OpenApi; the devices are its dashcam GPS trackers.
MANUFACTURER = "AssetsControls"
MODEL = "Dashcam GPS tracker (cloud capture)"

PHOTO_PAYLOAD = json.dumps({"type": "photo"}, separators=(",", ":"))
VIDEO_PAYLOAD = json.dumps({"type": "video"}, separators=(",", ":"))
STATUS_OPTIONS = ["pending", "ok", "busy", "error"]

# HA accepts only these characters in the node_id and object_id levels of a discovery topic.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_NOT_SLUG = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Entity:
    """One kind of entity every device gets."""

    component: str
    key: str
    name: str
    icon: str
    payload_press: str | None = None  # buttons only: the command they send


TAKE_PHOTO = Entity("button", "take_photo", "Take photo", "mdi:camera", PHOTO_PAYLOAD)
RECORD_VIDEO = Entity("button", "record_video", "Record video", "mdi:video", VIDEO_PAYLOAD)
LAST_CAPTURE = Entity("sensor", "last_capture", "Last capture", "mdi:camera-iris")
ENTITIES = (TAKE_PHOTO, RECORD_VIDEO, LAST_CAPTURE)


def safe_id(device: str) -> str:
    """A device id reduced to [A-Za-z0-9_-], stable and distinct for distinct ids.

    Ids that are already safe stay as they are. Others get their unsafe runs
    replaced by `_` plus a short hash of the original, so `truck.12` and
    `truck 12` do not collide with each other or with `truck_12`.
    """
    if not _UNSAFE.search(device):
        return device
    digest = hashlib.sha256(device.encode("utf-8")).hexdigest()[:8]
    stem = _UNSAFE.sub("_", device).strip("_")
    return f"{stem}_{digest}" if stem else digest


def _slug(text: str) -> str:
    # entity ids are lower-case [a-z0-9_] without leading, trailing or doubled underscores.
    return _NOT_SLUG.sub("_", text.lower()).strip("_")


def object_id(device: str, entity: Entity) -> str:
    """The object_id level of the entity's discovery topic."""
    return f"{safe_id(device)}_{entity.key}"


def unique_id(device: str, entity: Entity) -> str:
    """The entity's unique_id: stable across restarts, renames and config reorderings."""
    return f"{NODE_ID}_{object_id(device, entity)}"


def config_topic(prefix: str, device: str, entity: Entity) -> str:
    """`<prefix>/<component>/capture_bridge/<object_id>/config`."""
    return f"{prefix.strip('/')}/{entity.component}/{NODE_ID}/{object_id(device, entity)}/config"


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _device_block(device: str, entry: DeviceEntry) -> dict[str, Any]:
    return {
        "identifiers": [f"{NODE_ID}_{safe_id(device)}"],
        "name": entry.name or device,
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        "sw_version": __version__,
    }


def _origin() -> dict[str, Any]:
    origin: dict[str, Any] = {"name": ORIGIN_NAME, "sw_version": __version__}
    if SUPPORT_URL is not None:
        origin["support_url"] = SUPPORT_URL
    return origin


def _availability(base: str) -> list[dict[str, Any]]:
    return [
        {
            "topic": topics.availability_topic(base),
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]


def entity_config(config: Config, device: str, entry: DeviceEntry, entity: Entity) -> dict[str, Any]:
    """The discovery payload of one entity of one device."""
    base = config.mqtt.base_topic
    payload: dict[str, Any] = {
        "name": entity.name,
        "unique_id": unique_id(device, entity),
        # `object_id` in the payload is deprecated since HA 2025.10 (gone in 2026.4); older HA drops this key.
        "default_entity_id": f"{entity.component}.{_slug(f'{safe_id(device)}_{entity.key}')}",
        "icon": entity.icon,
        "availability": _availability(base),
        "device": _device_block(device, entry),
        "origin": _origin(),
    }
    if entity.payload_press is not None:
        payload.update(
            command_topic=topics.command_topic(base, device),
            payload_press=entity.payload_press,
            qos=1,
            # The bridge never executes a retained command, and one must not refire after a restart.
            retain=False,
        )
    else:
        state = topics.state_topic(base, device)
        payload.update(
            state_topic=state,
            value_template="{{ value_json.status }}",
            json_attributes_topic=state,
            # An enum lets HA offer the four statuses in automations and history.
            device_class="enum",
            options=STATUS_OPTIONS,
            qos=1,
        )
    return payload


def discovery_messages(config: Config) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs to publish retained with QoS 1; [] when discovery is disabled."""
    if not config.homeassistant.enabled:
        return []
    prefix = config.homeassistant.prefix
    return [
        (config_topic(prefix, device, entity), _encode(entity_config(config, device, entry, entity)))
        for device, entry in config.devices.items()
        for entity in ENTITIES
    ]

