"""MQTT topic names (pure)."""

from __future__ import annotations

from bridge.core.devices import safe_id

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
    """The bridge's online/offline topic (retained, also the last will): shared by every instance on `base`."""
    return f"{base}/bridge/state"


def instance_level(client_id: str) -> str:
    """A client_id as one topic level: as it is when it is one, else made safe (and distinct) by a hash."""
    if client_id and not any(c in "/+#" or ord(c) < 0x20 or ord(c) == 0x7F for c in client_id):
        return client_id
    return safe_id(client_id)


def instance_state_topic(base: str, client_id: str) -> str:
    """One bridge instance's own online/offline topic (retained): `<base>/bridge/instance/<client_id>/state`.

    Under `<base>/bridge/`, which no device id can take (`bridge` is reserved), and in a level of
    its own (`instance`), so it meets none of the bridge's other topics whatever the client_id.
    """
    return f"{base}/bridge/instance/{instance_level(client_id)}/state"


def instance_info_topic(base: str, client_id: str) -> str:
    """One bridge instance's own info (retained): what `<base>/bridge/info` says, which every instance writes."""
    return f"{base}/bridge/instance/{instance_level(client_id)}/info"


def instance_state_filter(base: str) -> str:
    """Every instance's own state topic."""
    return f"{base}/bridge/instance/+/state"


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
