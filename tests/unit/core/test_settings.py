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


def test_precedence_command_then_settings_then_config_then_built_in() -> None:
    store = SettingsStore({"truck-12": parse_settings({"resolution": "1080p", "count": 2})})
    assert store.current("truck-12") == {**built_in(), "resolution": "1080p", "count": 2}
    store.update("truck-12", {"count": 5})
    filled = with_settings({"resolution": 0}, store.current("truck-12"))
    params = parse_command(filled).api_params()
    assert params["FResolution"] == 0  # the command's own
    assert params["FCount"] == 5  # the device's setting
    # An API spelling in the command counts as given: no second spelling is added.
    filled = with_settings({"FCount": 7}, store.current("truck-12"))
    assert "count" not in filled
    assert parse_command(filled).api_params()["FCount"] == 7
    # Unconfigured devices fall back to the built-in defaults.
    assert store.current("other") == built_in()


def test_a_setting_equal_to_the_fallback_is_not_remembered() -> None:
    store = SettingsStore({"truck-12": {"resolution": "1080p"}})
    assert store.update("truck-12", {"resolution": "1080p", "count": 3}) is True
    assert json.loads(store.snapshot()) == {"truck-12": {"count": 3}}
    assert store.update("truck-12", {"count": 3}) is False
    store.update("truck-12", {"count": 1})  # back to the built-in
    assert json.loads(store.snapshot()) == {}


def test_snapshot_round_trip_follows_a_changed_config() -> None:
    before = SettingsStore({"truck-12": {"resolution": "1080p"}})
    before.update("truck-12", {"type": "video"})
    before.update("a64b2e58-9305-4a01-9c51-092205123945", {"camera": "top"})
    snapshot = before.snapshot()
    # Restarted with another config default: the chosen type stays, the default follows the config.
    after = SettingsStore({"truck-12": {"resolution": "480p"}})
    assert after.restore(snapshot) == []
    assert after.current("truck-12")["type"] == "video"
    assert after.current("truck-12")["resolution"] == "480p"
    assert after.current("a64b2e58-9305-4a01-9c51-092205123945")["camera"] == "top"
    assert sorted(after.devices()) == ["a64b2e58-9305-4a01-9c51-092205123945", "truck-12"]


def test_restore_drops_what_a_newer_config_refuses_and_says_so() -> None:
    store = SettingsStore({}, Limits(max_count=5))
    problems = store.restore(b'{"truck-12":{"count":50,"resolution":"1080p"},"van-3":"x"}')
    assert store.current("truck-12")["count"] == 1
    assert store.current("truck-12")["resolution"] == "1080p"
    assert any("count" in p for p in problems)
    assert any(p.startswith("van-3") for p in problems)
    assert store.restore(b"garbage") == ["not valid JSON"]
    assert store.devices() == []  # nothing half-restored
    assert store.restore(b"") == []


def test_encoding_is_compact_and_a_valid_command() -> None:
    payload = encode(built_in())
    assert b" " not in payload
    parse_command(json.loads(payload))
