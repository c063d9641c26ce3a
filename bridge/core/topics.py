"""MQTT topic names (pure)."""

from __future__ import annotations

SET_SUFFIX = "capture/set"
STATE_SUFFIX = "capture/state"


def set_filter(base: str, shared_group: str | None = None) -> str:
    """The subscription for commands, through a shared group when scaling out."""
    topic = f"{base}/+/{SET_SUFFIX}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def _device_between(topic: str, base: str, suffix: str) -> str | None:
    """`<base>/<id>/<suffix>` -> `<id>` (one non-empty level); None for any other topic."""
    prefix, tail = base + "/", "/" + suffix
    if not topic.startswith(prefix) or not topic.endswith(tail):
        return None
    device = topic[len(prefix) : -len(tail)]
    return device if device and "/" not in device else None


def device_of(topic: str, base: str) -> str | None:
    """`<base>/<id>/capture/set` -> `<id>`; None for any other topic."""
    return _device_between(topic, base, SET_SUFFIX)


def state_topic(base: str, device: str) -> str:
    """Where a device's capture state is published (retained)."""
    return f"{base}/{device}/{STATE_SUFFIX}"


def command_topic(base: str, device: str) -> str:
    """Where a device's capture commands arrive."""
    return f"{base}/{device}/{SET_SUFFIX}"


def availability_topic(base: str) -> str:
    """The bridge's online/offline topic (retained, also the last will)."""
    return f"{base}/bridge/state"


SETTINGS_SUFFIX = "capture/settings"
SETTINGS_SET_SUFFIX = "capture/settings/set"


def settings_set_filter(base: str) -> str:
    """The subscription for settings changes of every device."""
    return f"{base}/+/{SETTINGS_SET_SUFFIX}"


def device_of_settings_set(topic: str, base: str) -> str | None:
    """`<base>/<id>/capture/settings/set` -> `<id>`; None for any other topic."""
    return _device_between(topic, base, SETTINGS_SET_SUFFIX)


def settings_topic(base: str, device: str) -> str:
    """A device's current settings, every field (retained)."""
    return f"{base}/{device}/{SETTINGS_SUFFIX}"


def settings_set_topic(base: str, device: str) -> str:
    """Where a device's settings are changed (partial settings)."""
    return f"{base}/{device}/{SETTINGS_SET_SUFFIX}"


def rejected_topic(base: str) -> str:
    """Where a state goes whose device id is too long for its own state topic (not retained)."""
    return f"{base}/bridge/rejected"


def bridge_info_topic(base: str) -> str:
    """Version, captures in flight and backlog (retained)."""
    return f"{base}/bridge/info"


def bridge_settings_topic(base: str) -> str:
    """The bridge's memory of every device's chosen settings (retained)."""
    return f"{base}/bridge/settings"


def bridge_sync_topic(base: str, client_id: str) -> str:
    """A marker the bridge sends itself after subscribing: retained messages before it have arrived."""
    return f"{base}/bridge/sync/" + "".join("_" if c in "+#/" else c for c in client_id)
