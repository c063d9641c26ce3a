"""Home Assistant MQTT discovery (pure): the config messages that make the bridge and every device appear in HA.

One discovery message per entity, on `<prefix>/<component>/capture_bridge/<object_id>/config`,
retained, QoS 1, in full key names (no abbreviations), only keys HA's MQTT schema accepts.

The bridge device "capture-bridge" (identified by the MQTT `client_id`):
connectivity from `<base>/bridge/state` (the only entity that stays available when the
bridge is down: it is what says "off"), version, captures in flight and backlog from
`<base>/bridge/info`.

Each configured camera, `via_device` of the bridge, available while the bridge is:
- buttons "Capture" (`{}`: every field from the device's settings), "Take photo"
  (`{"type":"photo"}`) and "Record video" (`{"type":"video"}`) on `<base>/<id>/capture/set`;
- selects "Resolution", "Camera", "Capture type" and numbers "Photo count",
  "Video duration", "Photo interval": the device's settings, from `<base>/<id>/capture/settings`,
  changed through `<base>/<id>/capture/settings/set`;
- from `<base>/<id>/capture/state`: sensors "Last capture" (status; `pending` while one
  runs), "Last capture at" (timestamp), "Last file" (file id), a "Camera online"
  connectivity sensor (111 -> off, ok/busy -> on, other answers change nothing) and an
  event entity "Capture" (ok, busy, error) fired once per final state.

The event and the derived sensors read the state topic through templates: HA ignores
retained messages for events (so a replayed state fires nothing), and the event template
skips a state whose timestamp it has already fired for (a duplicate command answered
again with its first state).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from bridge import __version__
from bridge.config import Config, DeviceEntry
from bridge.core import settings, topics
from bridge.core.devices import bridge_id, safe_id

NODE_ID = "capture_bridge"
ORIGIN_NAME = "capture-bridge"
BRIDGE_NAME = "capture-bridge"
# Shown by HA as the origin's support link; None until the project has a public home.
SUPPORT_URL: str | None = None
# The cloud is AssetsControls' OpenApi; the devices are its dashcam GPS trackers.
MANUFACTURER = "AssetsControls"
MODEL = "Dashcam GPS tracker (cloud capture)"
BRIDGE_MODEL = "MQTT bridge to the AssetsControls OpenApi"

STATUS_OPTIONS = ["pending", "ok", "busy", "error"]
EVENT_TYPES = ["ok", "busy", "error"]

# HA accepts only these characters in the node_id and object_id levels of a discovery topic.
_NOT_SLUG = re.compile(r"[^a-z0-9_]+")

# Keep the entity's current value when a state says nothing new (a pending state, an error
# without a file): `this` is the entity itself; "None" makes HA show unknown.
_KEEP = "{% elif this.state not in ('unknown', 'unavailable') %}{{ this.state }}{% else %}None{% endif %}"
LAST_AT_TEMPLATE = "{% if value_json.status != 'pending' %}{{ value_json.timestamp }}" + _KEEP
LAST_FILE_TEMPLATE = "{% if value_json.status == 'ok' and value_json.file_id %}{{ value_json.file_id }}" + _KEEP
# An empty result leaves a binary sensor as it was.
CAMERA_ONLINE_TEMPLATE = (
    "{% if value_json.code == 111 %}OFF{% elif value_json.status in ('ok', 'busy') %}ON{% endif %}"
)
EVENT_TEMPLATE = (
    "{% if value_json.status in ('ok', 'busy', 'error') and value_json.timestamp != this.attributes.timestamp %}"
    "{{ {'event_type': value_json.status, 'file_id': value_json.file_id, 'error': value_json.error,"
    " 'message': value_json.message, 'request_id': value_json.request_id,"
    " 'timestamp': value_json.timestamp} | to_json }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class Entity:
    """One kind of entity every camera gets (or the bridge gets, for BRIDGE_ENTITIES)."""

    component: str
    key: str
    name: str
    icon: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _select(key: str, name: str, setting: str, options: list[str], icon: str) -> Entity:
    return Entity("select", key, name, icon, {"setting": setting, "options": options})


def _number(key: str, name: str, setting: str, icon: str, unit: str | None = None) -> Entity:
    return Entity("number", key, name, icon, {"setting": setting, "unit": unit})


CAPTURE = Entity("button", "capture", "Capture", "mdi:camera-iris", {"payload_press": "{}"})
PHOTO_PAYLOAD = _json({"type": "photo"})
VIDEO_PAYLOAD = _json({"type": "video"})
TAKE_PHOTO = Entity("button", "take_photo", "Take photo", "mdi:camera", {"payload_press": PHOTO_PAYLOAD})
RECORD_VIDEO = Entity("button", "record_video", "Record video", "mdi:video", {"payload_press": VIDEO_PAYLOAD})
RESOLUTION = _select(
    "resolution", "Resolution", "resolution", settings.RESOLUTION_OPTIONS, "mdi:image-size-select-large"
)
CAMERA = _select("camera", "Camera", "camera", settings.CAMERA_OPTIONS, "mdi:cctv")
CAPTURE_TYPE = _select("capture_type", "Capture type", "type", settings.TYPE_OPTIONS, "mdi:camera-switch")
PHOTO_COUNT = _number("photo_count", "Photo count", "count", "mdi:counter")
VIDEO_DURATION = _number("video_duration", "Video duration", "duration", "mdi:timer-outline", "s")
INTERVAL = _number("interval", "Photo interval", "interval", "mdi:timer-sand", "s")
LAST_CAPTURE = Entity("sensor", "last_capture", "Last capture", "mdi:camera-iris")
LAST_CAPTURE_AT = Entity("sensor", "last_capture_at", "Last capture at")
LAST_FILE = Entity("sensor", "last_file", "Last file", "mdi:file-image")
CAMERA_ONLINE = Entity("binary_sensor", "camera_online", "Camera online")
CAPTURE_EVENT = Entity("event", "capture_event", "Capture", "mdi:camera-iris")
ENTITIES = (
    CAPTURE, TAKE_PHOTO, RECORD_VIDEO,
    RESOLUTION, CAMERA, CAPTURE_TYPE, PHOTO_COUNT, VIDEO_DURATION, INTERVAL,
    LAST_CAPTURE, LAST_CAPTURE_AT, LAST_FILE, CAMERA_ONLINE, CAPTURE_EVENT,
)  # fmt: skip

BRIDGE_CONNECTION = Entity("binary_sensor", "connection", "Connection")
BRIDGE_VERSION = Entity("sensor", "version", "Version", "mdi:information-outline", {"field": "version"})
BRIDGE_IN_FLIGHT = Entity("sensor", "in_flight", "Captures in flight", "mdi:progress-upload", {"field": "in_flight"})
BRIDGE_BACKLOG = Entity("sensor", "backlog", "Capture backlog", "mdi:tray-full", {"field": "backlog"})
BRIDGE_ENTITIES = (BRIDGE_CONNECTION, BRIDGE_VERSION, BRIDGE_IN_FLIGHT, BRIDGE_BACKLOG)


def _slug(text: str) -> str:
    # entity ids are lower-case [a-z0-9_] without leading, trailing or doubled underscores.
    return re.sub("_+", "_", _NOT_SLUG.sub("_", text.lower())).strip("_")


def object_id(device: str, entity: Entity) -> str:
    """The object_id level of the entity's discovery topic."""
    return f"{safe_id(device)}_{entity.key}"


def unique_id(device: str, entity: Entity) -> str:
    """The entity's unique_id: stable across restarts, renames and config reorderings."""
    return f"{NODE_ID}_{object_id(device, entity)}"


def id_clash(config: Config) -> str | None:
    """Why two configured devices would give Home Assistant one unique_id, or None.

    `truck` + `last_capture` and `truck_last` + `capture` are both `capture_bridge_truck_last_capture`:
    HA would keep one entity and refuse the other. The line names the later key.
    """
    owners = {unique_id(bridge_id(config.mqtt.client_id), e): ("the bridge's own device", e) for e in BRIDGE_ENTITIES}
    for device in config.devices:
        for entity in ENTITIES:
            mine = (f"device {device!r}", entity)
            other = owners.setdefault(unique_id(device, entity), mine)
            if other != mine:
                return (f"devices.{device}: its Home Assistant entity {entity.key!r} would have the same unique_id "
                        f"({unique_id(device, entity)}) as entity {other[1].key!r} of {other[0]}; choose another id")
    return None


def config_topic(prefix: str, device: str, entity: Entity) -> str:
    """`<prefix>/<component>/capture_bridge/<object_id>/config`."""
    return f"{prefix.strip('/')}/{entity.component}/{NODE_ID}/{object_id(device, entity)}/config"


def bridge_config_topic(prefix: str, client_id: str, entity: Entity) -> str:
    """The discovery topic of one of the bridge device's entities."""
    return config_topic(prefix, bridge_id(client_id), entity)


def cleanup_filter(prefix: str) -> str:
    """Every discovery topic under our node id (read at start to clear what is no longer announced)."""
    return f"{prefix.strip('/')}/+/{NODE_ID}/+/config"


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


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


def _entity_ids(device_part: str, entity: Entity) -> dict[str, Any]:
    slug = _slug(f"{device_part}_{entity.key}")
    # HA before 2025.10 takes the entity id from `object_id` (its schema drops `default_entity_id`);
    # from 2025.10 `default_entity_id` wins and, when present, HA does not warn about `object_id`
    # (which stops working in 2026.4). zigbee2mqtt sends both the same way.
    return {"object_id": slug, "default_entity_id": f"{entity.component}.{slug}"}


def bridge_device_block(config: Config) -> dict[str, Any]:
    """The bridge device: one per client_id."""
    return {
        "identifiers": [f"{NODE_ID}_{bridge_id(config.mqtt.client_id)}"],
        "name": BRIDGE_NAME if config.mqtt.client_id == "capture-bridge" else f"{BRIDGE_NAME} {config.mqtt.client_id}",
        "manufacturer": ORIGIN_NAME,
        "model": BRIDGE_MODEL,
        "sw_version": __version__,
    }


def device_block(config: Config, device: str, entry: DeviceEntry, terminal_num: str | None = None) -> dict[str, Any]:
    """A camera device: its GUID (and terminal number once the cloud named it) as serial number."""
    serial = entry.guid if terminal_num is None else f"{terminal_num} ({entry.guid})"
    return {
        "identifiers": [f"{NODE_ID}_{safe_id(device)}"],
        "name": entry.name or device,
        "manufacturer": MANUFACTURER,
        "model": MODEL,
        "serial_number": serial,
        "via_device": bridge_device_block(config)["identifiers"][0],
    }


def entity_config(
    config: Config, device: str, entry: DeviceEntry, entity: Entity, terminal_num: str | None = None
) -> dict[str, Any]:
    """The discovery payload of one entity of one camera."""
    base = config.mqtt.base_topic
    payload: dict[str, Any] = {
        "name": entity.name,
        "unique_id": unique_id(device, entity),
        **_entity_ids(safe_id(device), entity),
    }
    if entity.icon is not None:
        payload["icon"] = entity.icon
    payload.update(availability=_availability(base), device=device_block(config, device, entry, terminal_num),
                   origin=_origin(), qos=1)
    state = topics.state_topic(base, device)
    if entity.component == "button":
        payload.update(
            command_topic=topics.command_topic(base, device),
            payload_press=entity.extra["payload_press"],
            # The bridge never executes a retained command, and one must not refire after a restart.
            retain=False,
        )
    elif entity.component in ("select", "number"):
        setting = entity.extra["setting"]
        payload.update(
            entity_category="config",
            state_topic=topics.settings_topic(base, device),
            value_template=f"{{{{ value_json.{setting} }}}}",
            command_topic=topics.settings_set_topic(base, device),
            command_template=f"{{{{ {{'{setting}': value}} | to_json }}}}",
            retain=False,
        )
        if entity.component == "select":
            payload["options"] = entity.extra["options"]
        else:
            limits = config.limits()
            high = {"count": limits.max_count, "duration": limits.max_duration}.get(setting, limits.max_interval)
            payload.update(min=0 if setting == "interval" else 1, max=high, step=1, mode="box",
                           command_template=f"{{{{ {{'{setting}': value | int}} | to_json }}}}")
            if entity.extra["unit"] is not None:
                payload.update(unit_of_measurement=entity.extra["unit"], device_class="duration")
    elif entity is LAST_CAPTURE:
        # An enum lets HA offer the four statuses in automations and history.
        payload.update(state_topic=state, value_template="{{ value_json.status }}", json_attributes_topic=state,
                       device_class="enum", options=STATUS_OPTIONS)
    elif entity is LAST_CAPTURE_AT:
        payload.update(state_topic=state, value_template=LAST_AT_TEMPLATE, device_class="timestamp")
    elif entity is LAST_FILE:
        payload.update(state_topic=state, value_template=LAST_FILE_TEMPLATE)
    elif entity is CAMERA_ONLINE:
        payload.update(state_topic=state, value_template=CAMERA_ONLINE_TEMPLATE, device_class="connectivity",
                       entity_category="diagnostic")
    elif entity is CAPTURE_EVENT:
        payload.update(state_topic=state, value_template=EVENT_TEMPLATE, event_types=EVENT_TYPES)
    else:  # pragma: no cover - every kind is handled above
        raise ValueError(f"no discovery payload for {entity.key}")
    return payload


def bridge_entity_config(config: Config, entity: Entity) -> dict[str, Any]:
    """The discovery payload of one entity of the bridge device."""
    base = config.mqtt.base_topic
    part = bridge_id(config.mqtt.client_id)
    payload: dict[str, Any] = {
        "name": entity.name,
        "unique_id": unique_id(part, entity),
        **_entity_ids(config.mqtt.client_id, entity),
    }
    if entity.icon is not None:
        payload["icon"] = entity.icon
    payload.update(device=bridge_device_block(config), origin=_origin(), qos=1, entity_category="diagnostic")
    if entity is BRIDGE_CONNECTION:
        # No availability: this entity is what shows the bridge down (off), not unavailable.
        payload.update(state_topic=topics.availability_topic(base), value_template="{{ value_json.state }}",
                       payload_on="online", payload_off="offline", device_class="connectivity")
    else:
        payload.update(availability=_availability(base), state_topic=topics.bridge_info_topic(base),
                       value_template=f"{{{{ value_json.{entity.extra['field']} }}}}")
        if entity is not BRIDGE_VERSION:
            payload.update(state_class="measurement")
    return payload


def camera_messages(config: Config, device: str, terminal_num: str | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) of one camera's entities."""
    prefix = config.homeassistant.prefix
    entry = config.devices[device]
    return [
        (config_topic(prefix, device, entity), _encode(entity_config(config, device, entry, entity, terminal_num)))
        for entity in ENTITIES
    ]


def discovery_messages(config: Config, terminals: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs to publish retained with QoS 1; [] when discovery is disabled."""
    if not config.homeassistant.enabled:
        return []
    prefix = config.homeassistant.prefix
    messages = [
        (bridge_config_topic(prefix, config.mqtt.client_id, entity), _encode(bridge_entity_config(config, entity)))
        for entity in BRIDGE_ENTITIES
    ]
    for device in config.devices:
        messages += camera_messages(config, device, (terminals or {}).get(device))
    return messages


def owner_name(config: Config, payload: bytes) -> str | None:
    """The device name in a retained discovery config announced by this bridge; None when not ours.

    Checked before clearing a config that is no longer announced: another bridge on the same
    broker (another base topic or client_id) keeps its entities.
    """
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    device = data.get("device") if isinstance(data, dict) else None
    if not isinstance(device, dict):
        return None
    name = str(device.get("name") or device.get("identifiers"))
    ours = bridge_device_block(config)["identifiers"][0]
    if device.get("via_device") == ours or device.get("identifiers") == [ours]:
        return name
    identifiers = device.get("identifiers")
    if "via_device" in device:
        return None
    if isinstance(identifiers, list) and any(str(i).startswith(f"{NODE_ID}_bridge_") for i in identifiers):
        return None  # another bridge's own device
    # Announced before the bridge device existed: then only one bridge per base topic was supported.
    availability = data.get("availability")
    mine = topics.availability_topic(config.mqtt.base_topic)
    if isinstance(availability, list) and any(isinstance(a, dict) and a.get("topic") == mine for a in availability):
        return name
    return None
