"""Intake (pure): a command as it arrived -> the capture to send, or the error it is answered with.

The one pipeline for MQTT commands and the `capture` CLI: resolve the device, decode the payload,
fill what it left out from the device's settings, validate. A bad payload is reported even when
the device is unknown too, and the state echoes whatever could be validated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core import state as states
from bridge.core.command import CaptureCommand, Limits, decode_payload, parse_command, request_id_of
from bridge.core.devices import resolve_device
from bridge.core.errors import BridgeError, InvalidCommand, UnknownDevice
from bridge.core.settings import with_settings

Defaults = Callable[[str], Mapping[str, Any]]
DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Rules:
    """What intake checks against (from the config)."""

    devices: Mapping[str, str]
    guid_topic_ids: bool = True
    limits: Limits = DEFAULT_LIMITS
    max_payload_bytes: int = 65536
    defaults_for: Defaults | None = None


@dataclass(frozen=True, slots=True)
class Intake:
    """The outcome: `capture` to send, or `error` to answer with; `ctx` for the state either way."""

    ctx: states.Context
    key: str  # the device as queues know it: the GUID in lower case, else the topic id
    capture: CaptureCommand | None
    error: BridgeError | None
    oversized: bool


def take(device: str, payload: bytes, rules: Rules) -> Intake:
    """Resolve, decode, fill in the device's settings, validate; never raises for any input."""
    capture: CaptureCommand | None = None
    error: BridgeError | None = None
    request_id: str | None = None
    guid: str | None = None
    oversized = len(payload) > rules.max_payload_bytes
    try:
        guid = resolve_device(device, rules.devices, rules.guid_topic_ids)
    except UnknownDevice as exc:
        error = exc
    try:
        data = decode_payload(payload, rules.max_payload_bytes)
        if rules.defaults_for is not None:
            data = with_settings(data, rules.defaults_for(device))
        capture = parse_command(data, rules.limits)
        request_id = capture.request_id
    except InvalidCommand as exc:
        error = exc  # a bad payload is reported even when the device is unknown too
        request_id = None if oversized else request_id_of(payload)
    ctx = states.Context(
        device=device,
        asset_guid=guid,
        request_id=request_id,
        request=capture.api_params() if capture is not None else None,
    )
    key = guid.lower() if guid is not None else device
    return Intake(ctx, key, capture, error, oversized)
