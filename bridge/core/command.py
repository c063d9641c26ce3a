"""Capture commands: MQTT payload bytes -> validated `CaptureCommand` -> API parameters.

Pure functions only. Every rejection raises `InvalidCommand` whose message names
the field and the reason; nothing here touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeGuard

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from bridge.core.errors import InvalidCommand

PHOTO, VIDEO, PHOTO_VIDEO = 1, 2, 3
TYPE_NAMES = {"photo": PHOTO, "video": VIDEO, "photo+video": PHOTO_VIDEO}
CAMERA_NAMES = {"main": "0", "top": "1", "0": "0", "1": "1"}
RESOLUTION_NAMES = {"360p": 0, "480p": 1, "720p": 2, "1080p": 3}
MAX_REQUEST_ID = 128
DEFAULT_DURATION = 10

# friendly name -> API name; both spellings address the same field.
FIELDS = {
    "camera": "FCameraID",
    "type": "FType",
    "count": "FCount",
    "duration": "FDuration",
    "resolution": "FResolution",
    "interval": "FInterval",
}
API_TO_FRIENDLY = {api: friendly for friendly, api in FIELDS.items()}
KNOWN_KEYS = frozenset(FIELDS) | frozenset(API_TO_FRIENDLY) | {"request_id"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper limits a command is checked against (config `bridge.max_*`)."""

    max_count: int = 100
    max_duration: int = 600
    max_interval: int = 3600


class CaptureCommand(BaseModel):
    """A validated capture request, already in the API's terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera: str = "0"
    type: int = PHOTO
    count: int = 1
    duration: int = DEFAULT_DURATION
    resolution: int = 2
    interval: int = 0
    request_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _merge_spellings(cls, data: Any, info: ValidationInfo) -> Any:
        # Both spellings of one field may appear only when they mean the same value.
        if not isinstance(data, dict):
            raise InvalidCommand("payload: must be a JSON object")
        unknown = sorted(k for k in data if k not in KNOWN_KEYS)
        if unknown:
            raise InvalidCommand(f"{unknown[0]}: unknown key")
        merged: dict[str, Any] = {}
        for friendly, api in FIELDS.items():
            if friendly in data and api in data:
                a, b = _normalize(friendly, data[friendly]), _normalize(api, data[api])
                if not _same(a, b):
                    raise InvalidCommand(f"{friendly}: given as {friendly} and {api} with different values")
            if friendly in data or api in data:
                merged[friendly] = data[friendly] if friendly in data else data[api]
        if "request_id" in data:
            merged["request_id"] = data["request_id"]
        limits = info.context if isinstance(info.context, Limits) else Limits()
        if "duration" not in merged and limits.max_duration < DEFAULT_DURATION:
            # The default must respect a configured limit below it, like any value sent.
            merged["duration"] = limits.max_duration
        return merged

    @field_validator("camera", "type", "resolution", mode="before")
    @classmethod
    def _enum_field(cls, value: object, info: ValidationInfo) -> object:
        return _normalize(str(info.field_name), value)

    @field_validator("count", "duration", "interval", mode="before")
    @classmethod
    def _bounded_field(cls, value: object, info: ValidationInfo) -> int:
        field = str(info.field_name)
        limits = info.context if isinstance(info.context, Limits) else Limits()
        high = {"count": limits.max_count, "duration": limits.max_duration}.get(field, limits.max_interval)
        return _bounded_int(field, value, 0, high)

    @field_validator("request_id", mode="before")
    @classmethod
    def _request_id(cls, value: object) -> object:
        if value is not None and not isinstance(value, str):
            raise InvalidCommand("request_id: must be a string")
        if isinstance(value, str) and len(value) > MAX_REQUEST_ID:
            raise InvalidCommand(f"request_id: longer than {MAX_REQUEST_ID} characters")
        return value

    @model_validator(mode="after")
    def _per_type_rules(self) -> CaptureCommand:
        # A count or duration the type uses must be at least 1; one it ignores may be 0 (sent as 0).
        if self.type in (PHOTO, PHOTO_VIDEO) and self.count < 1:
            raise InvalidCommand("count: must be at least 1 for a photo")
        if self.type in (VIDEO, PHOTO_VIDEO) and self.duration < 1:
            raise InvalidCommand("duration: must be at least 1 second for a video")
        return self

    def api_params(self) -> dict[str, Any]:
        """The `FT_GpActiveNewPhotograph` object; count/duration are 0 where the type ignores them."""
        return {
            "FCameraID": self.camera,
            "FType": self.type,
            "FCount": self.count if self.type in (PHOTO, PHOTO_VIDEO) else 0,
            "FDuration": self.duration if self.type in (VIDEO, PHOTO_VIDEO) else 0,
            "FResolution": self.resolution,
            "FInterval": self.interval,
        }


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _camera(value: object) -> str:
    if _is_int(value) and value in (0, 1):
        return str(value)
    if isinstance(value, str) and value in CAMERA_NAMES:
        return CAMERA_NAMES[value]
    raise InvalidCommand('camera: must be 0, 1, "main" or "top"')


def _type(value: object) -> int:
    if _is_int(value) and value in (PHOTO, VIDEO, PHOTO_VIDEO):
        return int(value)
    if isinstance(value, str) and value in TYPE_NAMES:
        return TYPE_NAMES[value]
    raise InvalidCommand('type: must be 1, 2, 3, "photo", "video" or "photo+video"')


def _resolution(value: object) -> int:
    if _is_int(value) and value in (0, 1, 2, 3):
        return int(value)
    if isinstance(value, str) and value in RESOLUTION_NAMES:
        return RESOLUTION_NAMES[value]
    raise InvalidCommand('resolution: must be 0-3, "360p", "480p", "720p" or "1080p"')


def _bounded_int(field: str, value: object, low: int, high: int) -> int:
    if not _is_int(value):
        raise InvalidCommand(f"{field}: must be an integer")
    number = int(value)
    if number < low or number > high:
        raise InvalidCommand(f"{field}: must be between {low} and {high}, got {number}")
    return number


def _normalize(field: str, value: object) -> object:
    friendly = API_TO_FRIENDLY.get(field, field)
    try:
        if friendly == "camera":
            return _camera(value)
        if friendly == "type":
            return _type(value)
        if friendly == "resolution":
            return _resolution(value)
        return value
    except InvalidCommand as exc:
        raise InvalidCommand(field + exc.message[len(friendly) :]) from None


def _same(a: object, b: object) -> bool:
    # 1, 1.0 and true compare equal in Python but are different JSON values (only 1 is a valid count).
    return type(a) is type(b) and a == b


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result and not _same(result[key], value):
            raise InvalidCommand(f"{key}: given twice with different values")
        result[key] = value
    return result


def decode_payload(payload: bytes, max_bytes: int = 65536) -> dict[str, Any]:
    """Bytes -> JSON object, or InvalidCommand (too large, not UTF-8, not JSON, not an object)."""
    if len(payload) > max_bytes:
        raise InvalidCommand(f"payload: larger than {max_bytes} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCommand("payload: not valid UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except InvalidCommand:
        raise
    except (ValueError, RecursionError):
        raise InvalidCommand("payload: not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidCommand("payload: must be a JSON object")
    # json.loads turns a "\\ud800" escape into a lone surrogate, which no UTF-8 state can carry.
    if "\\u" in text and _has_lone_surrogate(data):
        raise InvalidCommand("payload: contains a lone UTF-16 surrogate escape (\\ud800-\\udfff)")
    return data


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def request_id_of(payload: bytes) -> str | None:
    """Best-effort request_id of a payload that may be invalid (to echo it in the error state)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        rid = data.get("request_id")
        if isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID and not _has_lone_surrogate(rid):
            return rid
    return None


def parse_command(data: dict[str, Any], limits: Limits = Limits()) -> CaptureCommand:
    """A decoded JSON object -> CaptureCommand, applying defaults and the per-type rules."""
    try:
        return CaptureCommand.model_validate(data, context=limits)
    except ValidationError as exc:
        # Our validators raise InvalidCommand; pydantic wraps anything else it finds.
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        raise InvalidCommand(f"{where}: {err['msg']}") from None
