"""Home Assistant discovery: a bridge device, fourteen entities per camera, only keys HA accepts."""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2
import pytest

from bridge import __version__
from bridge.config import Config
from bridge.core.command import PHOTO, VIDEO, decode_payload, parse_command
from bridge.core.devices import safe_id
from bridge.core.errors import ConfigError
from bridge.core.settings import parse_settings
from bridge.features.discovery import cleanup_filter, discovery_messages, id_clash, owner_name
from bridge.features.homeassistant import HomeAssistant

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
GUID2 = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"
GUID3 = "5f0c3a8e-2d1b-4e7a-9c3f-1a2b3c4d5e6f"
HA_ID = re.compile(r"^[A-Za-z0-9_-]+$")
ENTITY_ID = re.compile(r"^(button|sensor|binary_sensor|select|number|event)\.[a-z0-9]+(_[a-z0-9]+)*$")
TOPIC = re.compile(r"^homeassistant/(button|sensor|binary_sensor|select|number|event)/capture_bridge/([^/]+)/config$")

# The discovery schema keys of Home Assistant 2025.4.4 (homeassistant/components/mqtt/<platform>.py,
# DISCOVERY_SCHEMA), which drops any other key silently; plus `default_entity_id`, the key that
# replaces `object_id` from 2025.10 on. `make ha-check` validates the payloads against HA itself.
COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic", "device",
    "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon", "json_attributes_template",
    "json_attributes_topic", "name", "object_id", "origin", "payload_available", "payload_not_available", "qos",
    "unique_id", "default_entity_id",
}  # fmt: skip
ALLOWED = {
    "button": COMMON | {"command_template", "command_topic", "device_class", "payload_press", "retain"},
    "select": COMMON | {"command_template", "command_topic", "optimistic", "options", "retain", "state_topic",
                        "value_template"},
    "number": COMMON | {"command_template", "command_topic", "device_class", "max", "min", "mode", "optimistic",
                        "payload_reset", "retain", "state_topic", "step", "unit_of_measurement", "value_template"},
    "sensor": COMMON | {"device_class", "expire_after", "force_update", "last_reset_value_template", "options",
                        "state_class", "state_topic", "suggested_display_precision", "unit_of_measurement",
                        "value_template"},
    "binary_sensor": COMMON | {"device_class", "expire_after", "force_update", "off_delay", "payload_off",
                               "payload_on", "state_topic", "value_template"},
    "event": COMMON | {"device_class", "event_types", "state_topic", "value_template"},
}  # fmt: skip
DEVICE_KEYS = {"identifiers", "connections", "manufacturer", "model", "model_id", "name", "hw_version",
               "serial_number", "sw_version", "via_device", "suggested_area", "configuration_url"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
CAMERA_ENTITIES = {
    "Capture": "button", "Take photo": "button", "Record video": "button",
    "Resolution": "select", "Camera": "select", "Capture type": "select",
    "Photo count": "number", "Video duration": "number", "Photo interval": "number",
    "Last capture": "sensor", "Last capture at": "sensor", "Last file": "sensor",
    "Camera online": "binary_sensor",
}  # fmt: skip
BRIDGE_ENTITIES = {"Connection": "binary_sensor", "Version": "sensor", "Captures in flight": "sensor",
                   "Capture backlog": "sensor"}


def make_config(devices: dict[str, Any], *, enabled: bool = True, base: str = "devices", **extra: Any) -> Config:
    return Config.model_validate(
        {
            "mqtt": {"base_topic": base, **extra.get("mqtt", {})},
            "cloud": {"token": "t"},
            "devices": devices,
            "homeassistant": {"enabled": enabled},
            **{k: v for k, v in extra.items() if k != "mqtt"},
        }
    )


def configs(config: Config) -> dict[str, dict[str, Any]]:
    """topic -> decoded payload."""
    result: dict[str, dict[str, Any]] = {}
    for topic, payload in discovery_messages(config):
        decoded = json.loads(payload)
        # Compact JSON: no whitespace between tokens.
        assert payload == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode()
        assert topic not in result
        result[topic] = decoded
    return result


def component(topic: str) -> str:
    match = TOPIC.match(topic)
    assert match is not None, topic
    return match.group(1)


def of_device(decoded: dict[str, dict[str, Any]], device_name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(component, entity name) -> payload, for one device."""
    return {(component(t), p["name"]): p for t, p in decoded.items() if p["device"]["name"] == device_name}


def camera(decoded: dict[str, dict[str, Any]], device_name: str, name: str, kind: str | None = None) -> dict[str, Any]:
    entities = of_device(decoded, device_name)
    kind = kind or CAMERA_ENTITIES.get(name, "event")
    return entities[(kind, name)]


def render(template: str, value_json: dict[str, Any], this_state: str = "unknown",
           this_attributes: dict[str, Any] | None = None) -> str:
    """Render a value template the way HA does (jinja2 with `value_json`, `this` and `to_json`)."""
    env = jinja2.Environment(autoescape=False)
    env.filters["to_json"] = lambda v: json.dumps(v)

    class This:
        state = this_state
        attributes = this_attributes or {}

    return str(env.from_string(template).render(value_json=value_json, this=This(), value=json.dumps(value_json)))


def test_a_bridge_device_and_fourteen_entities_per_camera() -> None:
    decoded = configs(make_config({"truck-12": GUID, "van-3": GUID2}))
    assert len(decoded) == 4 + 2 * 14
    for device in ("truck-12", "van-3"):
        entities = of_device(decoded, device)
        assert {(kind, name) for kind, name in entities} == {
            *((kind, name) for name, kind in CAMERA_ENTITIES.items()), ("event", "Capture")
        }
    bridge = of_device(decoded, "capture-bridge")
    assert {name: kind for kind, name in bridge} == BRIDGE_ENTITIES


def test_only_keys_home_assistant_accepts() -> None:
    decoded = configs(make_config({"truck-12": {"guid": GUID, "name": "Truck 12"}}))
    for topic, payload in decoded.items():
        kind = component(topic)
        assert set(payload) <= ALLOWED[kind], (topic, set(payload) - ALLOWED[kind])
        assert set(payload["device"]) <= DEVICE_KEYS
        assert set(payload["origin"]) <= ORIGIN_KEYS
        # Full names throughout: no abbreviation mixed in.
        assert not {"stat_t", "cmd_t", "avty", "dev", "o", "uniq_id", "val_tpl"} & set(payload)
        for block in payload.get("availability", []):
            assert set(block) <= {"topic", "value_template", "payload_available", "payload_not_available"}


def test_cameras_hang_under_the_bridge_device() -> None:
    decoded = configs(make_config({"truck-12": GUID}, mqtt={"client_id": "cb-1"}))
    bridge = of_device(decoded, "capture-bridge cb-1")
    bridge_ids = {json.dumps(p["device"]["identifiers"]) for p in bridge.values()}
    assert bridge_ids == {'["capture_bridge_bridge_cb-1"]'}
    for payload in bridge.values():
        assert payload["device"]["sw_version"] == __version__
        assert payload["entity_category"] == "diagnostic"
    for payload in of_device(decoded, "truck-12").values():
        device = payload["device"]
        assert device["via_device"] == "capture_bridge_bridge_cb-1"
        assert device["serial_number"] == GUID
        assert device["manufacturer"]
        assert device["model"]
        assert "sw_version" not in device  # the bridge's version belongs to the bridge
        assert payload["origin"] == {"name": "capture-bridge", "sw_version": __version__}


def test_bridge_connectivity_stays_available_and_says_off() -> None:
    decoded = configs(make_config({"truck-12": GUID}))
    connection = of_device(decoded, "capture-bridge")[("binary_sensor", "Connection")]
    assert "availability" not in connection
    assert connection["state_topic"] == "devices/bridge/state"
    assert connection["device_class"] == "connectivity"
    assert render(connection["value_template"], {"state": "offline"}) == connection["payload_off"]
    assert render(connection["value_template"], {"state": "online"}) == connection["payload_on"]
    for name in ("Version", "Captures in flight", "Capture backlog"):
        sensor = of_device(decoded, "capture-bridge")[("sensor", name)]
        assert sensor["state_topic"] == "devices/bridge/info"
        assert sensor["availability"][0]["topic"] == "devices/bridge/state"
    info = {"version": "1.2.3", "in_flight": 4, "backlog": 7}
    assert render(of_device(decoded, "capture-bridge")[("sensor", "Capture backlog")]["value_template"], info) == "7"


@pytest.mark.parametrize(("name", "expected_type"), [("Take photo", PHOTO), ("Record video", VIDEO)])
def test_buttons_send_a_valid_command_to_the_set_topic(name: str, expected_type: int) -> None:
    button = camera(configs(make_config({"truck-12": GUID})), "truck-12", name)
    assert button["command_topic"] == "devices/truck-12/capture/set"
    assert button["retain"] is False  # a retained command is never executed
    assert button["qos"] == 1
    assert parse_command(decode_payload(button["payload_press"].encode())).type == expected_type


def test_capture_button_sends_an_empty_command_so_the_settings_decide() -> None:
    button = camera(configs(make_config({"truck-12": GUID})), "truck-12", "Capture")
    assert json.loads(button["payload_press"]) == {}


@pytest.mark.parametrize(
    ("name", "setting", "sample"),
    [("Resolution", "resolution", "1080p"), ("Camera", "camera", "top"), ("Capture type", "type", "photo+video"),
     ("Photo count", "count", 3), ("Video duration", "duration", 30), ("Photo interval", "interval", 0)],
)
def test_settings_entities_read_and_write_the_settings_topics(name: str, setting: str, sample: Any) -> None:
    entity = camera(configs(make_config({"truck-12": GUID})), "truck-12", name)
    assert entity["state_topic"] == "devices/truck-12/capture/settings"
    assert entity["command_topic"] == "devices/truck-12/capture/settings/set"
    assert entity["retain"] is False
    assert entity["entity_category"] == "config"
    current = {"camera": "main", "type": "photo", "count": 1, "duration": 10, "resolution": "720p", "interval": 0}
    assert render(entity["value_template"], {**current, setting: sample}) == str(sample)
    # HA renders command_template with `value` (a number entity passes an int for whole values).
    env = jinja2.Environment(autoescape=False)
    env.filters["to_json"] = lambda v: json.dumps(v)
    sent = env.from_string(entity["command_template"]).render(value=sample)
    assert parse_settings(json.loads(sent)) == {setting: sample}
    if "options" in entity:
        assert sample in entity["options"]
        assert all(parse_settings({setting: option}) for option in entity["options"])


def test_number_limits_follow_the_config() -> None:
    decoded = configs(make_config({"truck-12": GUID}, bridge={"max_count": 5, "max_duration": 60}))
    count = camera(decoded, "truck-12", "Photo count")
    duration = camera(decoded, "truck-12", "Video duration")
    interval = camera(decoded, "truck-12", "Photo interval")
    assert (count["min"], count["max"], count["step"]) == (1, 5, 1)
    assert (duration["min"], duration["max"], duration["unit_of_measurement"]) == (1, 60, "s")
    assert (interval["min"], interval["max"]) == (0, 3600)


OK_STATE = {"status": "ok", "code": 200, "error": None, "message": "ins send ok", "request_id": "r-1",
            "file_id": "700160818000_1769373855", "timestamp": "2026-11-29T19:40:00.123Z"}
OFFLINE_STATE = {"status": "error", "code": 111, "error": "device_offline", "message": "device offline",
                 "request_id": None, "file_id": None, "timestamp": "2026-11-29T19:41:00.000Z"}
PENDING_STATE = {"status": "pending", "code": None, "error": None, "file_id": None,
                 "timestamp": "2026-11-29T19:42:00.000Z"}
BAD_STATE = {"status": "error", "code": None, "error": "invalid_payload", "message": "count: ...",
             "file_id": None, "timestamp": "2026-11-29T19:43:00.000Z"}


def test_result_sensors_follow_the_state_and_keep_their_value_on_pending() -> None:
    decoded = configs(make_config({"truck-12": GUID}))
    status = camera(decoded, "truck-12", "Last capture")
    assert (status["device_class"], status["options"]) == ("enum", ["pending", "ok", "busy", "error"])
    assert status["json_attributes_topic"] == status["state_topic"] == "devices/truck-12/capture/state"
    assert render(status["value_template"], PENDING_STATE) == "pending"

    at = camera(decoded, "truck-12", "Last capture at")
    assert at["device_class"] == "timestamp"
    assert render(at["value_template"], OK_STATE) == OK_STATE["timestamp"]
    assert render(at["value_template"], PENDING_STATE, this_state="2026-11-29T19:40:00.123000+00:00") == (
        "2026-11-29T19:40:00.123000+00:00"
    )
    assert render(at["value_template"], PENDING_STATE) == "None"  # unknown stays unknown, no parse error

    last_file = camera(decoded, "truck-12", "Last file")
    assert render(last_file["value_template"], OK_STATE) == OK_STATE["file_id"]
    assert render(last_file["value_template"], BAD_STATE, this_state="f-1") == "f-1"


def test_camera_online_from_the_last_cloud_answer() -> None:
    online = camera(configs(make_config({"truck-12": GUID})), "truck-12", "Camera online")
    assert online["device_class"] == "connectivity"
    assert render(online["value_template"], OK_STATE) == online.get("payload_on", "ON")
    assert render(online["value_template"], {**OK_STATE, "status": "busy"}) == "ON"
    assert render(online["value_template"], OFFLINE_STATE) == online.get("payload_off", "OFF")
    # Anything else (pending, invalid_payload, a cloud error) renders nothing: HA keeps the state.
    assert render(online["value_template"], PENDING_STATE) == ""
    assert render(online["value_template"], BAD_STATE) == ""


def test_capture_event_fires_once_per_final_state() -> None:
    event = camera(configs(make_config({"truck-12": GUID})), "truck-12", "Capture", "event")
    assert event["event_types"] == ["ok", "busy", "error"]
    assert event["state_topic"] == "devices/truck-12/capture/state"
    fired = json.loads(render(event["value_template"], OK_STATE))
    assert fired == {"event_type": "ok", "file_id": OK_STATE["file_id"], "error": None,
                     "message": "ins send ok", "request_id": "r-1", "timestamp": OK_STATE["timestamp"]}
    assert render(event["value_template"], PENDING_STATE) == ""
    # The same final state again (a duplicate command answered from memory): nothing fires.
    assert render(event["value_template"], OK_STATE, this_attributes={"timestamp": OK_STATE["timestamp"]}) == ""
    assert json.loads(render(event["value_template"], OFFLINE_STATE))["event_type"] == "error"


def test_entity_ids_follow_the_device_id_whatever_the_name() -> None:
    decoded = configs(make_config({"truck-12": {"guid": GUID, "name": "Lkw Müller"}}))
    entities = of_device(decoded, "Lkw Müller")
    assert entities[("button", "Take photo")]["default_entity_id"] == "button.truck_12_take_photo"
    assert entities[("button", "Take photo")]["object_id"] == "truck_12_take_photo"
    assert entities[("event", "Capture")]["default_entity_id"] == "event.truck_12_capture_event"
    for (kind, _), payload in entities.items():
        assert ENTITY_ID.match(payload["default_entity_id"]), payload["default_entity_id"]
        assert payload["default_entity_id"].startswith(f"{kind}.truck_12_")
    bridge = of_device(decoded, "capture-bridge")
    assert bridge[("binary_sensor", "Connection")]["default_entity_id"] == "binary_sensor.capture_bridge_connection"


def test_ids_are_stable_and_unique_across_devices() -> None:
    devices = {"truck-12": GUID, "van-3": GUID2, "truck_12": GUID3}
    first = configs(make_config(devices))
    again = configs(make_config(dict(reversed(devices.items()))))
    assert set(first) == set(again)
    assert {t: p["unique_id"] for t, p in first.items()} == {t: p["unique_id"] for t, p in again.items()}
    unique_ids = [p["unique_id"] for p in first.values()]
    assert len(set(unique_ids)) == len(unique_ids) == 4 + 3 * 14
    # The ids HA already knows from earlier versions stay the same.
    assert "capture_bridge_truck-12_take_photo" in unique_ids
    assert "capture_bridge_truck-12_last_capture" in unique_ids


def test_unsafe_device_ids_give_valid_and_distinct_object_ids() -> None:
    devices = {"truck.12": GUID, "truck 12": GUID2, "truck_12": GUID3, "Lkw-Müller": GUID}
    decoded = configs(make_config(devices))
    object_ids = []
    for topic, payload in decoded.items():
        match = TOPIC.match(topic)
        assert match is not None, topic
        object_ids.append(match.group(2))
        assert HA_ID.match(match.group(2)), topic
        assert HA_ID.match(payload["unique_id"]), payload["unique_id"]
        assert all(HA_ID.match(i) for i in payload["device"]["identifiers"])
    assert len(set(object_ids)) == len(object_ids) == 4 + 4 * 14
    # The MQTT topics keep the real id: the bridge subscribes to it, not to the sanitized one.
    assert {p["command_topic"] for p in decoded.values() if p.get("command_topic", "").endswith("/capture/set")} == {
        f"devices/{d}/capture/set" for d in devices
    }


def test_safe_id_leaves_safe_ids_alone_and_is_deterministic() -> None:
    assert safe_id("truck-12_A") == "truck-12_A"
    assert safe_id("truck.12") == safe_id("truck.12")
    assert safe_id("truck.12") != safe_id("truck 12")
    assert HA_ID.match(safe_id("ü"))


def test_disabled_gives_nothing() -> None:
    assert discovery_messages(make_config({"truck-12": GUID}, enabled=False)) == []


def test_no_devices_gives_the_bridge_device_only() -> None:
    decoded = configs(make_config({}))
    assert {p["name"] for p in decoded.values()} == set(BRIDGE_ENTITIES)


def test_custom_prefix() -> None:
    config = Config.model_validate(
        {"cloud": {"token": "t"}, "devices": {"truck-12": GUID}, "homeassistant": {"prefix": "ha/"}}
    )
    found = [t for t, _ in discovery_messages(config)]
    assert len(found) == 4 + 14
    assert all(re.match(r"^ha/[a-z_]+/capture_bridge/[A-Za-z0-9_-]+/config$", t) for t in found)
    assert cleanup_filter("ha/") == "ha/+/capture_bridge/+/config"


def test_owner_recognises_this_bridges_configs_only() -> None:
    config = make_config({"truck-12": GUID})
    mine = dict(configs(config))
    for payload in mine.values():
        assert owner_name(config, json.dumps(payload).encode()) is not None
    other_client = make_config({"truck-12": GUID}, mqtt={"client_id": "other"})
    for payload in mine.values():
        assert owner_name(other_client, json.dumps(payload).encode()) is None
    # One client_id is one bridge (a broker holds one session per client id): after a change of
    # base topic, its old configs are still its own, and stale.
    other_base = make_config({"truck-12": GUID}, base="elsewhere")
    # A config from before the bridge device existed: recognised by its availability topic.
    legacy = {"name": "Take photo", "device": {"identifiers": ["capture_bridge_van-3"], "name": "Van 3"},
              "availability": [{"topic": "devices/bridge/state"}]}
    assert owner_name(config, json.dumps(legacy).encode()) == "Van 3"
    assert owner_name(other_base, json.dumps(legacy).encode()) is None
    assert owner_name(config, b"not json") is None
    assert owner_name(config, b"[]") is None


def test_ids_whose_entities_would_share_a_unique_id_are_refused_naming_the_key() -> None:
    # `truck` + `last_capture` and `truck_last` + `capture` are one unique_id: HA would keep one entity.
    clash = make_config({"truck": GUID, "truck_last": GUID2})
    why = id_clash(clash)
    assert why is not None
    assert why.startswith("devices.truck_last: ")
    assert "capture_bridge_truck_last_capture" in why
    with pytest.raises(ConfigError, match=r"^devices\.truck_last: "):
        HomeAssistant(clash, lambda *args, **kwargs: True)
    assert id_clash(make_config({"truck": GUID, "truck-12": GUID2, "van_3": GUID3})) is None
