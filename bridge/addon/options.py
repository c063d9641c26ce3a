"""The add-on's options (`/data/options.json`, written by the Supervisor) -> the bridge's config data.

The options are a flat, UI-friendly subset of the config (config.yaml's `schema:` at the repository
root declares them); everything else keeps the bridge's defaults. Every error names the option a
user sees in Home Assistant, not the config key behind it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from bridge.addon.supervisor import Broker
from bridge.core.errors import ConfigError

# The options the add-on declares, and the config key each one sets.
OPTION_KEYS: dict[str, str] = {
    "cloud_url": "cloud.base_url",
    "username": "cloud.username",
    "password": "cloud.password",
    "devices": "devices",
    "devices_file": "devices",
    "base_topic": "mqtt.base_topic",
    "guid_topic_ids": "bridge.guid_topic_ids",
    "log_level": "logging.level",
}
# A config key at the start of an error line -> the option that sets it.
_KEY_TO_OPTION = [(key, option) for option, key in OPTION_KEYS.items() if key != "devices"]


def read_options(path: Path) -> dict[str, Any]:
    """The JSON object the Supervisor wrote; ConfigError when it is missing or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the add-on options {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"the add-on options {path} are not JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the add-on options {path} are not a JSON object")
    return data


def _text(options: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = options.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ConfigError(f"{key}: fill it in on the add-on's Configuration tab")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be text")
    return value.strip() if key != "password" else value


def _listed_devices(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`devices: [{id, guid, name}]` -> {id: {guid, name}}."""
    listed = options.get("devices") or []
    if not isinstance(listed, list):
        raise ConfigError("devices: must be a list of id / guid / name")
    devices: dict[str, dict[str, Any]] = {}
    for number, entry in enumerate(listed, 1):
        if not isinstance(entry, dict):
            raise ConfigError(f"devices, entry {number}: must have an id and a guid")
        device_id, guid = entry.get("id"), entry.get("guid")
        if not isinstance(device_id, str) or not device_id.strip():
            raise ConfigError(f"devices, entry {number}: id is empty")
        if not isinstance(guid, str) or not guid.strip():
            raise ConfigError(f"devices, entry {number} ({device_id}): guid is empty")
        device_id = device_id.strip()
        if device_id in devices:
            raise ConfigError(f"devices, entry {number}: id {device_id!r} is listed twice")
        name = entry.get("name")
        devices[device_id] = {"guid": guid.strip(), **({"name": name} if isinstance(name, str) and name else {})}
    return devices


def devices_file_path(value: str, config_dir: Path) -> Path:
    """A `devices_file` option -> the file, always inside the add-on's own config folder."""
    path = PurePosixPath(value)
    try:
        relative = path.relative_to(config_dir.as_posix()) if path.is_absolute() else path
    except ValueError:
        relative = PurePosixPath("..")
    if not relative.parts or ".." in relative.parts:
        raise ConfigError(f"devices_file: {value!r} must name a file in the add-on's config folder "
                          "(e.g. devices.yaml)")
    return config_dir.joinpath(*relative.parts)


def _file_devices(value: str, config_dir: Path) -> dict[str, Any]:
    """The YAML mapping in `devices_file`, in the config's own `devices:` format."""
    path = devices_file_path(value, config_dir)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"devices_file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"devices_file: {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"devices_file: {path}{where} is not valid YAML") from None
    if isinstance(loaded, dict) and set(loaded) == {"devices"}:
        loaded = loaded["devices"]  # a `devices:` section copied from a bridge config file
    if not isinstance(loaded, dict):
        raise ConfigError(f"devices_file: {path} must be a mapping of topic id -> GUID (or guid/name/defaults)")
    return {str(key): value for key, value in loaded.items()}


def config_data(options: Mapping[str, Any], broker: Broker, data_dir: Path, config_dir: Path) -> dict[str, Any]:
    """The bridge's config for these options and this broker, as plain data (not yet validated)."""
    devices: dict[str, Any] = _listed_devices(options)
    devices_file = _text(options, "devices_file", required=False)
    if devices_file is not None:
        from_file = _file_devices(devices_file, config_dir)
        both = sorted(set(devices) & set(from_file))
        if both:
            raise ConfigError(f"devices: {both[0]!r} is both in the list and in devices_file; keep one")
        devices.update(from_file)
    log_level = options.get("log_level") or "info"
    guid_topic_ids = options.get("guid_topic_ids", True)
    if not isinstance(guid_topic_ids, bool):
        raise ConfigError("guid_topic_ids: must be true or false")
    mqtt: dict[str, Any] = {"url": broker.url, "username": broker.username, "password": broker.password,
                            "base_topic": _text(options, "base_topic", required=False) or "devices"}
    return {
        "mqtt": mqtt,
        "cloud": {"base_url": _text(options, "cloud_url"), "username": _text(options, "username"),
                  "password": _text(options, "password")},
        "devices": devices,
        # Everything the bridge remembers lives in the add-on's /data (kept in backups and updates).
        "bridge": {"guid_topic_ids": guid_topic_ids, "journal_path": str(data_dir / "journal.sqlite")},
        # The Supervisor's watchdog connects to this port inside the add-on's network.
        "metrics": {"host": "0.0.0.0", "port": 9108},
        "logging": {"level": str(log_level).upper()},
    }


def in_option_terms(message: str) -> str:
    """A config error line with the config key at its start replaced by the option that sets it."""
    for key, option in _KEY_TO_OPTION:
        if message.startswith(f"{key}:"):
            return option + message[len(key):]
    if message.startswith("devices."):
        return re.sub(r"^devices\.([^:]+?)(\.guid|\.name|\.defaults[^:]*)?:", r"devices (\1\2):", message)
    if message.startswith("mqtt."):
        return f"the Supervisor's MQTT service: {message}"
    return message
