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

Settings belong to the device, not to the topic id that names it: they are keyed by its
FAssetGUID in lower case, so `truck-12` and its GUID (in any case) share one entry.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

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
from bridge.core.devices import GUID_RE
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
MAX_PROBLEMS_LISTED = 20  # stored or legacy settings: at most this many problems logged, then a count
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
    """The settings users chose, per device (keyed by GUID): only fields that differ from its fallback.

    This is the in-RAM view commands read; what is durable lives behind `SettingsRecord`.
    """

    def __init__(
        self,
        devices: Mapping[str, str],
        config_defaults: Mapping[str, Mapping[str, Any]] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        guid_topic_ids: bool = True,
    ) -> None:
        self.limits = limits
        self._guid_topic_ids = guid_topic_ids
        self._keys = {device: guid.lower() for device, guid in devices.items()}
        self._ids: dict[str, list[str]] = {}
        for device, key in self._keys.items():
            self._ids.setdefault(key, []).append(device)
        defaults = config_defaults or {}
        # Ids of one GUID share its settings and their config defaults (a later id's value wins a conflict).
        self._config = {key: fallback({k: v for i in ids for k, v in defaults.get(i, {}).items()}, limits)
                        for key, ids in self._ids.items()}
        self._default = built_in(limits)
        self._default_current = effective({}, self._default)
        self._choices: dict[str, Settings] = {}
        # current() runs for every command: computed once per device until its choices change.
        self._current: dict[str, Settings] = {}

    def key_of(self, device: str) -> str | None:
        """Topic id -> the device's key (its GUID in lower case); None for an id that is no device."""
        key = self._keys.get(device)
        if key is not None:
            return key
        if self._guid_topic_ids and GUID_RE.match(device):
            return device.lower()
        return None

    def configured(self, key: str) -> bool:
        """The device has a configured topic id."""
        return key in self._ids

    def ids_of(self, key: str) -> list[str]:
        """The configured topic ids of a device (empty for a GUID-only device)."""
        return self._ids.get(key, [])

    def configured_keys(self) -> list[str]:
        """Every configured device, once."""
        return list(self._ids)

    def fallback_of(self, key: str) -> Settings:
        """Config defaults over the built-in, for one device."""
        return self._config.get(key, self._default)

    def current(self, device: str) -> Settings:
        """Every field the device named by this topic id uses now (do not modify the returned mapping)."""
        key = self.key_of(device)
        return self._default_current if key is None else self.current_of(key)

    def current_of(self, key: str) -> Settings:
        """Every field a device uses now, by key (do not modify the returned mapping)."""
        found = self._current.get(key)
        if found is None:
            if key not in self._choices and key not in self._config:
                return self._default_current  # any GUID may come: not one cache entry each
            found = self._current[key] = effective(self._choices.get(key, {}), self.fallback_of(key))
        return found

    def choices(self, key: str) -> Settings:
        """The fields users chose for a device (do not modify the returned mapping)."""
        return self._choices.get(key, {})

    def keys(self) -> list[str]:
        """Devices with choices of their own."""
        return list(self._choices)

    def merged(self, key: str, partial: Mapping[str, Any]) -> Settings:
        """What the device's choices become with `partial` on top (nothing is changed yet)."""
        return own_choices({**self.choices(key), **partial}, self.fallback_of(key))

    def beneath(self, key: str, older: Mapping[str, Any]) -> Settings:
        """What the device's choices become with `older` choices under them (nothing is changed yet)."""
        return own_choices({**older, **self.choices(key)}, self.fallback_of(key))

    def set(self, key: str, choices: Mapping[str, Any]) -> bool:
        """Replace a device's choices; True when what it uses changed."""
        before = self.current_of(key)
        self._current.pop(key, None)
        kept = own_choices(choices, self.fallback_of(key))
        if kept:
            self._choices[key] = kept
        else:
            self._choices.pop(key, None)
        return self.current_of(key) != before


@dataclass(frozen=True, slots=True)
class StoredDevice:
    """One device's row in the durable store."""

    choices: Settings
    topic: str  # the topic id whose `capture/settings` holds its retained settings


@dataclass(frozen=True, slots=True)
class QueuedChange:
    """A settings change acknowledged but not applied yet when the bridge stopped (it waited its turn)."""

    id: int
    device: str  # the topic id it came on
    partial: Settings


@dataclass(frozen=True, slots=True)
class StoredSettings:
    """Everything the durable store holds, read at start."""

    devices: dict[str, StoredDevice] = dataclasses.field(default_factory=dict)
    queued: list[QueuedChange] = dataclasses.field(default_factory=list)
    # True once, on the first start after an upgrade from a bridge that kept settings on the broker.
    import_legacy: bool = False


class SettingsRecord(Protocol):
    """Where what users chose is kept durably (bridge/infra/settings_db.py; a fake in unit tests).

    Writes are collected and made durable by `commit`, which runs before a settings change is
    acknowledged to the broker.
    """

    def load(self) -> StoredSettings:
        """Everything stored, read once at start."""
        ...

    def put(self, key: str, choices: Settings, topic: str) -> None:
        """Keep a device's choices (no choices: forget the device)."""
        ...

    def queue(self, device: str, partial: Settings) -> int:
        """Keep a change that waits for its turn; returns its id."""
        ...

    def applied(self, change_id: int) -> None:
        """A queued change was applied (or refused): forget it."""
        ...

    def imported(self) -> None:
        """The one-time import of the legacy broker memory is over: never again."""
        ...

    def commit(self) -> None:
        """Make the writes so far durable, or raise StoreError and keep them for the next commit."""
        ...


class StoreError(Exception):
    """The durable settings store cannot be read or written; the message says why (one line)."""
