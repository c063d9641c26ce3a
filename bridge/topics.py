"""MQTT topic names (pure)."""

from __future__ import annotations

SET_SUFFIX = "capture/set"
STATE_SUFFIX = "capture/state"


def set_filter(base: str, shared_group: str | None = None) -> str:
    """The subscription for commands, through a shared group when scaling out."""
    topic = f"{base}/+/{SET_SUFFIX}"
    return f"$share/{shared_group}/{topic}" if shared_group else topic


def device_of(topic: str, base: str) -> str | None:
    """`<base>/<id>/capture/set` -> `<id>`; None for any other topic."""
    prefix = base + "/"
    suffix = "/" + SET_SUFFIX
    if not topic.startswith(prefix) or not topic.endswith(suffix):
        return None
    device = topic[len(prefix) : -len(suffix)]
    return device if device and "/" not in device else None


def state_topic(base: str, device: str) -> str:
    """Where a device's capture state is published (retained)."""
    return f"{base}/{device}/{STATE_SUFFIX}"


def command_topic(base: str, device: str) -> str:
    """Where a device's capture commands arrive."""
    return f"{base}/{device}/{SET_SUFFIX}"


def availability_topic(base: str) -> str:
    """The bridge's online/offline topic (retained, also the last will)."""
    return f"{base}/bridge/state"
