"""The legacy settings memory (pure): what an older bridge kept retained on `<base>/bridge/settings`.

One JSON object, topic id -> that device's choices, read once when upgrading (see
bridge/features/legacy_settings.py). It is input like any other: refused unparsed past
MAX_LEGACY_BYTES, only devices of this bridge kept, invalid fields dropped and counted.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from bridge.core.errors import InvalidCommand
from bridge.core.settings import MAX_PROBLEMS_LISTED, Settings, SettingsStore, parse_settings

# Refused unparsed past this: the smallest Maximum Packet Size the bridge announces (mqtt/adapter.py).
MAX_LEGACY_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class LegacyMemory:
    """What a legacy memory holds that this bridge can use, and what it could not."""

    choices: dict[str, Settings] = dataclasses.field(default_factory=dict)  # key -> choices
    problems: list[str] = dataclasses.field(default_factory=list)  # the first MAX_PROBLEMS_LISTED
    dropped: int = 0  # entries or fields dropped, in all


def parse_legacy(payload: bytes, store: SettingsStore, max_guids: int) -> LegacyMemory:
    """The legacy memory (topic id -> choices) -> choices per device; never raises for any input.

    Only configured devices and GUID devices (at most `max_guids`) are kept; an entry under a
    configured id wins over one under its GUID.
    """
    memory = LegacyMemory()

    def problem(text: str) -> None:
        memory.dropped += 1
        if len(memory.problems) < MAX_PROBLEMS_LISTED:
            memory.problems.append(text)

    if len(payload) > MAX_LEGACY_BYTES:
        problem(f"{len(payload)} bytes, more than the {MAX_LEGACY_BYTES} a settings memory can hold (not read)")
        return memory
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        problem("not valid JSON")
        return memory
    if not isinstance(data, dict):
        problem("not a JSON object")
        return memory
    by_configured_id: set[str] = set()
    guids = 0
    for device, entry in data.items():
        key = store.key_of(device)
        if key is None:
            problem(f"{device[:80]!r}: not a configured device nor a GUID")
            continue
        if not isinstance(entry, dict):
            problem(f"{device[:80]}: not a JSON object")
            continue
        named = device in store.ids_of(key)
        if key in by_configured_id and not named:
            continue  # its configured id's entry wins
        if key not in memory.choices and not store.configured(key):
            if guids >= max_guids:
                problem(f"{device[:80]}: more than {max_guids} GUID devices (bridge.max_guid_settings)")
                continue
            guids += 1
        kept: Settings = {}
        for name, value in entry.items():
            try:
                kept.update(parse_settings({name: value}, store.limits))
            except InvalidCommand as exc:
                problem(f"{device[:80]}: {exc.message[:120]}")
        memory.choices[key] = kept
        if named:
            by_configured_id.add(key)
    return memory
