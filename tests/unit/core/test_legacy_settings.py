"""The legacy settings memory as hostile input: bounded, only this bridge's devices, problems counted."""

from __future__ import annotations

import json

from bridge.core.command import Limits
from bridge.core.legacy_settings import MAX_LEGACY_BYTES, parse_legacy
from bridge.core.settings import MAX_PROBLEMS_LISTED, SettingsStore

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
OTHER = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"
STORE = SettingsStore({"truck-12": GUID}, limits=Limits(max_count=5))


def test_configured_ids_and_guids_are_kept_under_their_device() -> None:
    memory = parse_legacy(json.dumps({
        GUID.upper(): {"count": 2, "camera": "top"}, "truck-12": {"count": 3}, OTHER.upper(): {"FResolution": 3},
    }).encode(), STORE, max_guids=10)
    assert memory.choices == {GUID: {"count": 3}, OTHER: {"resolution": "1080p"}}  # the configured id's entry wins
    assert memory.dropped == 0


def test_garbage_keys_with_slashes_and_bad_fields_are_dropped_and_counted() -> None:
    hostile = {"x/../../other/tree": {"count": 2}, "+": {"count": 2}, "truck-13": {"count": 2},
               **{f"junk-{i}": "not an object" for i in range(500)},
               "truck-12": {"count": 50, "zoom": 1, "resolution": "1080p"}}
    memory = parse_legacy(json.dumps(hostile).encode(), STORE, max_guids=10)
    assert memory.choices == {GUID: {"resolution": "1080p"}}
    assert len(memory.problems) == MAX_PROBLEMS_LISTED
    assert memory.dropped == 505
    for payload, why in ((b"garbage", "not valid JSON"), (b"[" * 100_000, "not valid JSON"),
                         (b"[1]", "not a JSON object")):
        assert parse_legacy(payload, STORE, 10).problems == [why]


def test_a_memory_too_large_is_not_parsed_and_guids_are_capped() -> None:
    huge = b"{" + b" " * MAX_LEGACY_BYTES + b"}"
    memory = parse_legacy(huge, STORE, 10)
    assert memory.choices == {}
    assert "not read" in memory.problems[0]
    many = {f"{i:08x}-9305-4a01-9c51-092205123945": {"count": 2} for i in range(50)}
    memory = parse_legacy(json.dumps({**many, "truck-12": {"count": 2}}).encode(), STORE, 10)
    assert len(memory.choices) == 11  # ten GUIDs and the configured device
    assert memory.dropped == 40
