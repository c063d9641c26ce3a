"""Which topic ids are devices of this bridge, and their FAssetGUID (pure): the one rule for both."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from bridge.core.errors import UnknownDevice

# A topic level we accept as a device id: no MQTT wildcards or separators, no control chars.
DEVICE_ID_RE = re.compile(r"^[^/+#\x00-\x1f\x7f]+$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_DEVICE_ID = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Ids the bridge's own topics and probes use: a configured device must not take them.
RESERVED_IDS = frozenset({"bridge"})
RESERVED_PREFIX = "$"  # the shared-subscription probe devices are `$capture-bridge-probe-<nonce>`


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


def safe_id(device: str) -> str:
    """A device id reduced to [A-Za-z0-9_-], stable and distinct for distinct ids.

    Ids that are already safe stay as they are. Others get their unsafe runs
    replaced by `_` plus a short hash of the original, so `truck.12` and
    `truck 12` do not collide with each other or with `truck_12`.
    """
    if not _UNSAFE.search(device):
        return device
    digest = hashlib.sha256(device.encode("utf-8")).hexdigest()[:8]
    stem = _UNSAFE.sub("_", device).strip("_")
    return f"{stem}_{digest}" if stem else digest


def bridge_id(client_id: str) -> str:
    """The bridge's own identifier (Home Assistant device), from the MQTT client_id."""
    return f"bridge_{safe_id(client_id)}"


def collision(device: str, client_id: str) -> str | None:
    """Why a configured device id would collide with the bridge's own topics or identifiers, or None."""
    if device in RESERVED_IDS:
        return f"{device!r} is the bridge's own topic level (<base>/{device}/...)"
    if device.startswith(RESERVED_PREFIX):
        return "ids starting with '$' are reserved for the bridge's probes"
    if safe_id(device) == bridge_id(client_id):
        return f"it is the identifier of the bridge's own Home Assistant device (client_id {client_id!r})"
    return None
