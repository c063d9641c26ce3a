"""Home Assistant discovery: three entities per device, valid commands, stable and HA-safe ids."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bridge import __version__
from bridge.command import PHOTO, VIDEO, decode_payload, parse_command
from bridge.config import Config
from bridge.discovery import discovery_messages, safe_id
from bridge.topics import availability_topic, command_topic, state_topic

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
GUID2 = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"
GUID3 = "5f0c3a8e-2d1b-4e7a-9c3f-1a2b3c4d5e6f"
HA_ID = re.compile(r"^[A-Za-z0-9_-]+$")
ENTITY_ID = re.compile(r"^(button|sensor)\.[a-z0-9_]+$")
TOPIC = re.compile(r"^homeassistant/(button|sensor)/capture_bridge/([^/]+)/config$")


def make_config(devices: dict[str, Any], *, enabled: bool = True, base: str = "devices") -> Config:
    return Config.model_validate(
        {
            "mqtt": {"base_topic": base},
            "cloud": {"token": "t"},
            "devices": devices,
            "homeassistant": {"enabled": enabled},
        }
    )


def configs(config: Config) -> dict[str, dict[str, Any]]:
    """topic -> decoded payload."""
    result: dict[str, dict[str, Any]] = {}
    for topic, payload in discovery_messages(config):
        assert isinstance(payload, bytes)
        decoded = json.loads(payload)
        # Compact JSON: no whitespace between tokens.
        assert payload == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode()
        assert topic not in result
        result[topic] = decoded
    return result


def by_name(decoded: dict[str, dict[str, Any]], device_name: str) -> dict[str, dict[str, Any]]:
    """entity name -> payload, for one device."""
    return {p["name"]: p for p in decoded.values() if p["device"]["name"] == device_name}


def test_each_device_gets_two_buttons_and_a_sensor() -> None:
    decoded = configs(make_config({"truck-12": GUID, "van-3": GUID2}))
    assert len(decoded) == 6
    for device in ("truck-12", "van-3"):
        entities = by_name(decoded, device)
        assert set(entities) == {"Take photo", "Record video", "Last capture"}
    components = sorted(TOPIC.match(t).group(1) for t in decoded)  # type: ignore[union-attr]
    assert components == ["button"] * 4 + ["sensor"] * 2


@pytest.mark.parametrize(("name", "expected_type"), [("Take photo", PHOTO), ("Record video", VIDEO)])
def test_buttons_send_a_valid_command_to_the_set_topic(name: str, expected_type: int) -> None:
    button = by_name(configs(make_config({"truck-12": GUID})), "truck-12")[name]
    assert button["command_topic"] == command_topic("devices", "truck-12") == "devices/truck-12/capture/set"
    command = parse_command(decode_payload(button["payload_press"].encode()))
    assert command.type == expected_type
    # A retained command is never executed by the bridge: the button must not retain.
    assert button["retain"] is False
    assert button["qos"] == 1


def test_sensor_reads_status_and_whole_state_as_attributes() -> None:
    sensor = by_name(configs(make_config({"truck-12": GUID})), "truck-12")["Last capture"]
    assert sensor["state_topic"] == state_topic("devices", "truck-12")
    assert sensor["json_attributes_topic"] == sensor["state_topic"]
    assert sensor["value_template"] == "{{ value_json.status }}"
    assert set(sensor["options"]) == {"pending", "ok", "busy", "error"}
    assert "command_topic" not in sensor


def test_icons() -> None:
    entities = by_name(configs(make_config({"truck-12": GUID})), "truck-12")
    assert {n: e["icon"] for n, e in entities.items()} == {
        "Take photo": "mdi:camera",
        "Record video": "mdi:video",
        "Last capture": "mdi:camera-iris",
    }


def test_availability_follows_the_bridge_state_topic() -> None:
    for payload in configs(make_config({"truck-12": GUID}, base="fleet/eu")).values():
        assert payload["availability"] == [
            {
                "topic": availability_topic("fleet/eu"),
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ]


def test_device_and_origin_blocks() -> None:
    decoded = configs(make_config({"truck-12": GUID}))
    devices = [p["device"] for p in decoded.values()]
    assert all(d == devices[0] for d in devices)  # one HA device for the three entities
    assert devices[0]["identifiers"] == ["capture_bridge_truck-12"]
    assert devices[0]["sw_version"] == __version__
    assert devices[0]["manufacturer"]
    assert devices[0]["model"]
    for payload in decoded.values():
        assert payload["origin"]["name"] == "capture-bridge"
        assert payload["origin"]["sw_version"] == __version__


def test_friendly_name_names_the_device() -> None:
    decoded = configs(make_config({"van-3": {"guid": GUID2, "name": "Van 3 (Lyon)"}}))
    assert {p["device"]["name"] for p in decoded.values()} == {"Van 3 (Lyon)"}
    # The name is for people; ids and topics still follow the device id.
    assert all("van-3" in p["unique_id"] for p in decoded.values())
    assert all(p["command_topic"] == "devices/van-3/capture/set" for p in decoded.values() if "command_topic" in p)


def test_ids_are_stable_and_unique_across_devices() -> None:
    devices = {"truck-12": GUID, "van-3": GUID2, "truck_12": GUID3}
    first = configs(make_config(devices))
    # Reordering the config changes nothing a device's entities are known by.
    again = configs(make_config(dict(reversed(devices.items()))))
    assert set(first) == set(again)
    assert {t: p["unique_id"] for t, p in first.items()} == {t: p["unique_id"] for t, p in again.items()}
    unique_ids = [p["unique_id"] for p in first.values()]
    assert len(set(unique_ids)) == len(unique_ids) == 9
    assert "capture_bridge_truck-12_take_photo" in unique_ids
    # default_entity_id is only HA's first suggestion (truck-12 and truck_12 both suggest
    # button.truck_12_take_photo; HA adds _2), so it must be valid, not unique.
    assert all(ENTITY_ID.match(p["default_entity_id"]) for p in first.values())
    assert len({json.dumps(p["device"]["identifiers"]) for p in first.values()}) == 3


def test_unsafe_device_ids_give_valid_and_distinct_object_ids() -> None:
    devices = {"truck.12": GUID, "truck 12": GUID2, "truck_12": GUID3, "Lkw-Müller": GUID}
    decoded = configs(make_config(devices))
    assert len(decoded) == 12
    object_ids = []
    for topic, payload in decoded.items():
        match = TOPIC.match(topic)
        assert match is not None, topic
        object_ids.append(match.group(2))
        assert HA_ID.match(match.group(2)), topic
        assert HA_ID.match(payload["unique_id"]), payload["unique_id"]
        assert all(HA_ID.match(i) for i in payload["device"]["identifiers"])
    assert len(set(object_ids)) == 12
    # The MQTT topics keep the real id: the bridge subscribes to it, not to the sanitized one.
    assert {p["command_topic"] for p in decoded.values() if "command_topic" in p} == {
        f"devices/{d}/capture/set" for d in devices
    }


def test_safe_id_leaves_safe_ids_alone_and_is_deterministic() -> None:
    assert safe_id("truck-12_A") == "truck-12_A"
    assert safe_id("truck.12") == safe_id("truck.12")
    assert safe_id("truck.12") != safe_id("truck 12")
    assert HA_ID.match(safe_id("ü"))


def test_disabled_gives_nothing() -> None:
    assert discovery_messages(make_config({"truck-12": GUID}, enabled=False)) == []


def test_no_devices_gives_nothing() -> None:
    assert discovery_messages(make_config({})) == []


def test_custom_prefix() -> None:
    config = Config.model_validate(
        {"cloud": {"token": "t"}, "devices": {"truck-12": GUID}, "homeassistant": {"prefix": "ha/"}}
    )
    found = [t for t, _ in discovery_messages(config)]
    assert len(found) == 3
    assert all(re.match(r"^ha/(button|sensor)/capture_bridge/truck-12_[a-z_]+/config$", t) for t in found)


