"""Per-device capture settings (pure): what a command that omits a field uses.

For each field a command leaves out, the bridge takes the device's setting (set on
`<base>/<id>/capture/settings/set`, published retained on `<base>/<id>/capture/settings`),
then the config's `devices.<id>.defaults`, then the built-in default of a command.

Settings use a command's names, values and limits (friendly or API names), except
that count and duration must be at least 1 whatever the type: a setting outlives the
type it was chosen with. They are published in friendly form with every field
(`{"camera":"main","type":"photo","count":1,...}`), which is itself a valid command.

A setting equal to what the device would use without it (its config default, else
the built-in) is not kept as a choice of its own, so changing `devices.<id>.defaults`
in the config reaches every field nobody set to something else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bridge.core.command import (
    API_TO_FRIENDLY,
    CAMERA_NAMES,
    DEFAULT_DURATION,
    FIELDS,
    RESOLUTION_NAMES,
    TYPE_NAMES,
    Limits,
    _bounded_int,
    _normalize,
    _same,
    decode_payload,
)
from bridge.core.devices import DEVICE_ID_RE
from bridge.core.errors import InvalidCommand

# API value -> the friendly value published in the settings.
CAMERA_LABELS = {"0": "main", "1": "top"}
TYPE_LABELS = {number: name for name, number in TYPE_NAMES.items()}
RESOLUTION_LABELS = {number: name for name, number in RESOLUTION_NAMES.items()}
CAMERA_OPTIONS = [name for name in CAMERA_NAMES if name not in CAMERA_LABELS]
TYPE_OPTIONS = list(TYPE_NAMES)
RESOLUTION_OPTIONS = list(RESOLUTION_NAMES)

Settings = dict[str, Any]
MAX_SETTINGS_BYTES = 4096
DEFAULT_LIMITS = Limits()


def built_in(limits: Limits = DEFAULT_LIMITS) -> Settings:
    """The defaults of a command, in friendly form (the duration capped like a command's)."""
    return {
        "camera": "main",
        "type": "photo",
        "count": 1,
        "duration": min(DEFAULT_DURATION, limits.max_duration),
        "resolution": "720p",
        "interval": 0,
    }


def _friendly_value(field: str, value: object, limits: Limits) -> object:
    normalized = _normalize(field, value)
    if field == "camera":
        return CAMERA_LABELS[str(normalized)]
    if field == "type":
        return TYPE_LABELS[int(normalized)]  # type: ignore[call-overload]
    if field == "resolution":
        return RESOLUTION_LABELS[int(normalized)]  # type: ignore[call-overload]
    high = {"count": limits.max_count, "duration": limits.max_duration}.get(field, limits.max_interval)
    low = 0 if field == "interval" else 1
    return _bounded_int(field, value, low, high)


def parse_settings(data: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Settings:
    """A partial settings object (friendly or API names) -> validated, friendly form; InvalidCommand if not."""
    result: Settings = {}
    for key, value in data.items():
        field = API_TO_FRIENDLY.get(key, key)
        if field not in FIELDS:
            what = "not a setting (send it with a command)" if key == "request_id" else "unknown key"
            raise InvalidCommand(f"{key}: {what}")
        try:
            friendly = _friendly_value(field, value, limits)
        except InvalidCommand as exc:
            # Name the key as it was sent (FCount, not count).
            raise InvalidCommand(key + exc.message[len(field) :]) from None
        if field in result and not _same(result[field], friendly):
            raise InvalidCommand(f"{field}: given as {field} and {FIELDS[field]} with different values")
        result[field] = friendly
    return result


def parse_settings_payload(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Settings:
    """Bytes from `capture/settings/set` -> validated partial settings; InvalidCommand if not."""
    return parse_settings(decode_payload(payload, MAX_SETTINGS_BYTES), limits)


def fallback(config_defaults: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> Settings:
    """What a device uses for fields it has no setting of: config defaults over the built-in."""
    return {**built_in(limits), **config_defaults}


def own_choices(settings: Mapping[str, Any], fallback_settings: Mapping[str, Any]) -> Settings:
    """The fields that differ from the fallback: the ones a user chose."""
    return {k: v for k, v in settings.items() if fallback_settings.get(k) != v}


def effective(choices: Mapping[str, Any], fallback_settings: Mapping[str, Any]) -> Settings:
    """Every field, in the fixed order of a command."""
    merged = {**fallback_settings, **choices}
    return {field: merged[field] for field in FIELDS}


def with_settings(command: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded command with the fields it left out (in either spelling) taken from `settings`."""
    filled = dict(command)
    for field, value in settings.items():
        if field not in command and FIELDS[field] not in command:
            filled[field] = value
    return filled


def encode(settings: Mapping[str, Any]) -> bytes:
    """Compact JSON."""
    return json.dumps(dict(settings), separators=(",", ":")).encode()


class SettingsStore:
    """The settings users chose, per device: only fields that differ from the device's fallback.

    The bridge keeps them retained on `<base>/bridge/settings` (one JSON object, device ->
    choices) and reads them back at start, so a config default changed later still reaches
    every field nobody chose.
    """

    def __init__(self, config_defaults: Mapping[str, Mapping[str, Any]], limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._config = {device: fallback(d, limits) for device, d in config_defaults.items()}
        self._default = built_in(limits)
        self._default_current = effective({}, self._default)
        self._choices: dict[str, Settings] = {}
        # current() runs for every command: computed once per device until its choices change.
        self._current: dict[str, Settings] = {}

    def fallback_of(self, device: str) -> Settings:
        """Config defaults over the built-in, for one device."""
        return self._config.get(device, self._default)

    def current(self, device: str) -> Settings:
        """Every field the device uses now (do not modify the returned mapping)."""
        found = self._current.get(device)
        if found is None:
            if device not in self._choices and device not in self._config:
                return self._default_current  # any id may come: not one cache entry each
            found = self._current[device] = effective(self._choices.get(device, {}), self.fallback_of(device))
        return found

    def devices(self) -> list[str]:
        """Devices with choices of their own."""
        return list(self._choices)

    def update(self, device: str, partial: Mapping[str, Any]) -> bool:
        """Apply validated partial settings; True when the device's settings changed."""
        before = self.current(device)
        self._set(device, own_choices({**self._choices.get(device, {}), **partial}, self.fallback_of(device)))
        return self.current(device) != before

    def forget(self, device: str) -> None:
        """Drop a device's choices (a device removed from the config)."""
        self._set(device, {})

    def snapshot(self) -> bytes:
        """Every device's choices, for the retained `<base>/bridge/settings`."""
        return encode({device: self._choices[device] for device in sorted(self._choices)})

    def restore(self, payload: bytes) -> list[str]:
        """Take back a snapshot; returns what was wrong with it (fields a newer config refuses are dropped)."""
        problems: list[str] = []
        self._choices.clear()
        self._current.clear()
        if not payload:
            return problems
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return ["not valid JSON"]
        if not isinstance(data, dict):
            return ["not a JSON object"]
        for device, choices in data.items():
            if not DEVICE_ID_RE.match(device):
                # A key like "x/../y" would make the bridge write to topics outside a device's own.
                problems.append(f"{device[:80]!r}: not a device id (one topic level)")
                continue
            if not isinstance(choices, dict):
                problems.append(f"{device}: not a JSON object")
                continue
            kept: Settings = {}
            for key, value in choices.items():
                try:
                    kept.update(parse_settings({key: value}, self.limits))
                except InvalidCommand as exc:
                    problems.append(f"{device}: {exc.message}")
            self._set(device, own_choices(kept, self.fallback_of(device)))
        return problems

    def _set(self, device: str, choices: Settings) -> None:
        self._current.pop(device, None)
        if choices:
            self._choices[device] = choices
        else:
            self._choices.pop(device, None)
