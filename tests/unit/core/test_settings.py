"""Per-device settings: validation like a command, precedence, what is remembered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.core.command import Limits, parse_command
from bridge.core.errors import InvalidCommand
from bridge.core.settings import (
    SettingsStore,
    built_in,
    encode,
    parse_settings,
    parse_settings_payload,
    with_settings,
)


def test_settings_take_a_commands_names_and_values_and_publish_friendly_ones() -> None:
    assert parse_settings({"FResolution": 3, "camera": 1, "type": 3, "count": 2}) == {
        "resolution": "1080p", "camera": "top", "type": "photo+video", "count": 2,
    }  # fmt: skip
    assert parse_settings({"resolution": "480p", "FResolution": 1}) == {"resolution": "480p"}
    assert parse_settings({"type": "video", "FCameraID": "0", "interval": 0}) == {
        "type": "video", "camera": "main", "interval": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"count": 0}, "count: must be between 1 and 100, got 0"),
        ({"duration": 0}, "duration: must be between 1 and 600, got 0"),
        ({"FCount": 101}, "FCount: must be between 1 and 100, got 101"),
        ({"interval": 3601}, "interval: must be between 0 and 3600, got 3601"),
        ({"count": "3"}, "count: must be an integer"),
        ({"count": True}, "count: must be an integer"),
        ({"resolution": "4k"}, "resolution: must be"),
        ({"camera": 2}, "camera: must be"),
        ({"type": "audio"}, "type: must be"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"request_id": "r"}, "request_id: not a setting"),
        ({"count": 2, "FCount": 3}, "count: given as count and FCount with different values"),
    ],
)
def test_invalid_settings_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidCommand) as info:
        parse_settings(data)
    assert info.value.message.startswith(message)


def test_payload_must_be_a_json_object() -> None:
    assert parse_settings_payload(b'{"count":3}') == {"count": 3}
    for bad in (b"", b"[1]", b"nope", b"\xff"):
        with pytest.raises(InvalidCommand):
            parse_settings_payload(bad)


def test_limits_are_the_configured_ones() -> None:
    limits = Limits(max_count=5, max_duration=5, max_interval=5)
    with pytest.raises(InvalidCommand, match="between 1 and 5"):
        parse_settings({"count": 6}, limits)
    # The built-in 10 s video is capped like a command's default.
    assert built_in(limits)["duration"] == 5


def test_built_in_settings_are_the_command_defaults() -> None:
    command = parse_command({})
    assert parse_command(dict(built_in())).api_params() == command.api_params()


GUID = "a64b2e58-9305-4a01-9c51-092205123945"
OTHER = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"


def test_precedence_command_then_settings_then_config_then_built_in() -> None:
    store = SettingsStore({"truck-12": GUID}, {"truck-12": parse_settings({"resolution": "1080p", "count": 2})})
    assert store.current("truck-12") == {**built_in(), "resolution": "1080p", "count": 2}
    store.set(GUID, store.merged(GUID, {"count": 5}))
    filled = with_settings({"resolution": 0}, store.current("truck-12"))
    params = parse_command(filled).api_params()
    assert params["FResolution"] == 0  # the command's own
    assert params["FCount"] == 5  # the device's setting
    # An API spelling in the command counts as given: no second spelling is added.
    filled = with_settings({"FCount": 7}, store.current("truck-12"))
    assert "count" not in filled
    assert parse_command(filled).api_params()["FCount"] == 7
    # Unknown ids fall back to the built-in defaults.
    assert store.current("other") == built_in()


def test_case_variants_of_a_guid_and_its_configured_id_are_one_device() -> None:
    store = SettingsStore({"truck-12": GUID.upper()}, {"truck-12": {"resolution": "1080p"}})
    keys = {store.key_of(device) for device in ("truck-12", GUID, GUID.upper(), GUID.title())}
    assert keys == {GUID}
    store.set(GUID, store.merged(GUID, {"count": 4}))
    for device in ("truck-12", GUID, GUID.upper()):
        assert store.current(device)["count"] == 4
        assert store.current(device)["resolution"] == "1080p"  # the configured id's defaults too
    assert store.keys() == [GUID]
    assert store.key_of(OTHER.upper()) == OTHER
    # Two ids of one GUID: one device, their config defaults together.
    both = SettingsStore({"a": GUID, "b": GUID.upper()}, {"b": {"resolution": "480p"}, "a": {"count": 2}})
    assert (both.current("a")["resolution"], both.current("b")["count"]) == ("480p", 2)
    assert SettingsStore({}, guid_topic_ids=False).key_of(GUID) is None
    assert store.key_of("truck-13") is None


def test_a_setting_equal_to_the_fallback_is_not_remembered() -> None:
    store = SettingsStore({"truck-12": GUID}, {"truck-12": {"resolution": "1080p"}})
    assert store.set(GUID, store.merged(GUID, {"resolution": "1080p", "count": 3})) is True
    assert store.choices(GUID) == {"count": 3}
    assert store.set(GUID, store.merged(GUID, {"count": 3})) is False
    store.set(GUID, store.merged(GUID, {"count": 1}))  # back to the built-in
    assert store.keys() == []


def test_stored_choices_follow_a_changed_config() -> None:
    before = SettingsStore({"truck-12": GUID}, {"truck-12": {"resolution": "1080p"}})
    before.set(GUID, before.merged(GUID, {"type": "video"}))
    # Restarted with another config default: the chosen type stays, the default follows the config.
    after = SettingsStore({"truck-12": GUID}, {"truck-12": {"resolution": "480p"}})
    after.set(GUID, before.choices(GUID))
    assert after.current("truck-12")["type"] == "video"
    assert after.current("truck-12")["resolution"] == "480p"


def test_older_choices_go_beneath_newer_ones() -> None:
    store = SettingsStore({"truck-12": GUID})
    store.set(GUID, store.merged(GUID, {"interval": 5}))
    store.set(GUID, store.beneath(GUID, {"interval": 9, "resolution": "1080p"}))
    assert store.choices(GUID) == {"interval": 5, "resolution": "1080p"}


def test_encoding_is_compact_and_a_valid_command() -> None:
    payload = encode(built_in())
    assert b" " not in payload
    parse_command(json.loads(payload))
