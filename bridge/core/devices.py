"""Which topic ids are devices of this bridge, and their FAssetGUID (pure): the one rule for both."""

from __future__ import annotations

import re
from collections.abc import Mapping

from bridge.core.errors import UnknownDevice

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_DEVICE_ID = 128


def resolve_device(device: str, devices: Mapping[str, str], guid_topic_ids: bool = True) -> str:
    """Topic id -> FAssetGUID: the `devices` map (topic id -> GUID) first, else the id itself when it is a GUID."""
    guid = devices.get(device)
    if guid is not None:
        return guid
    if len(device) > MAX_DEVICE_ID:
        raise UnknownDevice(f"device id longer than {MAX_DEVICE_ID} characters")
    if guid_topic_ids and GUID_RE.match(device):
        return device
    if guid_topic_ids:
        raise UnknownDevice(f"device {device!r} is not configured and is not a GUID")
    raise UnknownDevice(f"device {device!r} is not configured")


def accepted(device: str, devices: Mapping[str, str], guid_topic_ids: bool = True) -> bool:
    """A device a command may address: configured, or a GUID topic id when those are allowed."""
    try:
        resolve_device(device, devices, guid_topic_ids)
    except UnknownDevice:
        return False
    return True
