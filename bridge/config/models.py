"""The configuration's sections: one pydantic model each, `extra="forbid"`, secrets as SecretStr."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from bridge.config.secret_files import secret_from_file
from bridge.core.command import Limits
from bridge.core.devices import DEVICE_ID_RE, GUID_RE, collision
from bridge.core.errors import ConfigError, InvalidCommand
from bridge.core.settings import parse_settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Section):
    """How to reach the broker and where our topics live."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    # A file holding the password (Docker/Kubernetes secret); the content never shows in check-config.
    password_file: Path | None = None
    client_id: str = Field(default="capture-bridge", min_length=1, max_length=128)
    base_topic: str = "devices"
    # auto: MQTT 5, falling back to 3.1.1 when the broker refuses 5.
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", validation_alias=AliasChoices("protocol", "protocol_version", "version")
    )
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(default=60, ge=5, le=3600)
    # A persistent session keeps QoS 1 commands queued on the broker while we are down.
    persistent_session: bool = True
    session_expiry: int = Field(default=86400, ge=0)
    shared_group: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    # Seconds to wait for the TCP connection and then for the broker's CONNACK.
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    reconnect_min: float = Field(default=1.0, gt=0)
    reconnect_max: float = Field(default=60.0, gt=0)
    # Where a command's MQTT 5 Response Topic may send its state (topic filters). Whatever the
    # list says, never a wildcard, a `$` topic, the base topic's tree or Home Assistant discovery.
    response_topics: list[str] = Field(default_factory=lambda: ["#"])
    # Request/response without MQTT 5: each final state also, not retained, on
    # <base>/<id>/capture/result/<request_id> (features/results.py).
    result_topics: bool = False

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        # YAML reads `protocol: 5` as an int and `3.1.1` as a string; accept the usual spellings.
        text = str(value).strip().lower().removeprefix("mqtt").removeprefix("v")
        if text in ("5", "5.0"):
            return "5"
        if text in ("3.1.1", "311", "4"):
            return "3.1.1"
        if text == "auto":
            return "auto"
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username or parts.password:
            # Credentials in a URL would show in check-config and logs: they belong in username/password.
            raise ValueError("must not carry credentials: use mqtt.username and mqtt.password")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError("has a bad port") from exc
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be scheme://host:port only (no path, query or fragment)")
        return value

    @field_validator("base_topic")
    @classmethod
    def _check_base_topic(cls, value: str) -> str:
        if value.startswith("/") or value.endswith("/"):
            # Silently dropping the slash would subscribe to other topics than the ones the user's
            # flows publish to ('/devices/x' and 'devices/x' are different MQTT topics).
            raise ValueError(f"must not start or end with '/' (write {value.strip('/')!r})")
        if not value or any(c in value for c in "+#\x00") or "//" in value:
            raise ValueError("must be a non-empty topic without wildcards or empty levels")
        return value

    @field_validator("response_topics")
    @classmethod
    def _check_response_topics(cls, value: list[str]) -> list[str]:
        for sub in value:
            levels = sub.split("/")
            bad_hash = "#" in sub and (levels[-1] != "#" or sub.count("#") > 1)
            bad_plus = any("+" in level and level != "+" for level in levels)
            if not sub or bad_hash or bad_plus or "\x00" in sub:
                raise ValueError(f"{sub!r} is not an MQTT topic filter")
        return value

    @field_validator("shared_group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        if value is not None and not DEVICE_ID_RE.match(value):
            raise ValueError("must be one topic level without wildcards")
        return value

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: object) -> object:
        return secret_from_file(data, "mqtt", "password")

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS."""
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    @property
    def host(self) -> str:
        """The broker's host name."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The broker's port (1883, or 8883 for TLS, when the URL names none)."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


class CloudConfig(_Section):
    """The vendor OpenApi and how we call it."""

    base_url: str = "https://cloud.assetscontrols.com:3443/OpenApi"
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    # Files holding the token / password (Docker/Kubernetes secrets), instead of the plain keys.
    token_file: Path | None = None
    password_file: Path | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    # The cloud holds an Instruction open ~15 s while it waits for the device.
    read_timeout: float = Field(default=20.0, gt=0)
    verify_tls: bool = True
    ca_file: Path | None = None
    time_difference: int = 28800
    language: str = "1"
    # Idle pooled connections are closed after this: below the idle limits of NATs and load balancers.
    keepalive_timeout: float = Field(default=15.0, gt=0)
    # Tries of a call that certainly did not reach the cloud, or met 503/429 (see bridge/infra/cloud.py).
    retry_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff: float = Field(default=0.5, ge=0)
    retry_backoff_max: float = Field(default=5.0, ge=0)
    retry_deadline: float = Field(default=45.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "retry_device_timeout" in data:
            raise ValueError("retry_device_timeout was removed: a device timeout (138) is never sent again")
        return data

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            # Credentials in a URL would show in check-config and logs: they belong in their own keys.
            raise ValueError("must not carry credentials: use cloud.token, or cloud.username and cloud.password")
        if parts.query or parts.fragment or value.endswith(("?", "#")):
            raise ValueError("must have no ?query or #fragment (e.g. https://cloud.assetscontrols.com:3443/OpenApi)")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError("has a bad port") from exc
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: object) -> object:
        data = secret_from_file(data, "cloud", "token")
        return secret_from_file(data, "cloud", "password")

    @model_validator(mode="after")
    def _credentials(self) -> CloudConfig:
        if self.token is None and (self.username is None or self.password is None):
            raise ValueError("set cloud.token, or cloud.username and cloud.password")
        return self


class DeviceEntry(_Section):
    """One device: its FAssetGUID and, optionally, a friendly name and capture defaults."""

    guid: str
    name: str | None = None
    # Fields a command leaves out, when the device has no setting of its own (see bridge/core/settings.py).
    defaults: dict[str, Any] = Field(default_factory=dict)

    @field_validator("defaults", mode="before")
    @classmethod
    def _check_defaults(cls, value: object) -> object:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping of capture fields (camera, type, count, ...)")  # noqa: TRY004 - pydantic reports ValueError
        try:
            # Shape and names here; the limits of bridge.max_* are checked by Config.
            return parse_settings(value, Limits(max_count=2**31, max_duration=2**31, max_interval=2**31))
        except InvalidCommand as exc:
            raise ValueError(exc.message) from None

    @field_validator("guid")
    @classmethod
    def _check_guid(cls, value: str) -> str:
        if not GUID_RE.match(value):
            raise ValueError("is not a GUID (8-4-4-4-12 hex digits)")
        return value


class BridgeConfig(_Section):
    """Limits and behaviour of the bridge itself."""

    # A topic id that is not under `devices` but is a GUID is used as the FAssetGUID.
    guid_topic_ids: bool = True
    max_count: int = Field(default=100, ge=1)
    max_duration: int = Field(default=600, ge=1)
    max_interval: int = Field(default=3600, ge=0)
    max_payload_bytes: int = Field(default=65536, ge=64)
    max_in_flight: int = Field(default=1024, ge=1, le=65536)
    max_backlog: int = Field(default=10000, ge=0)
    # null: on when Home Assistant discovery announces devices (HA shows a running capture as
    # "pending"), off otherwise.
    publish_pending: bool | None = None
    journal: bool = True
    journal_path: Path | None = None
    # GUID-only (unconfigured) devices whose settings are kept, at most; past it a new one is refused.
    max_guid_settings: int = Field(default=10000, ge=0)
    dedupe_window: float = Field(default=600.0, ge=0)
    shutdown_timeout: float = Field(default=20.0, ge=0)


class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery."""

    enabled: bool = True
    prefix: str = "homeassistant"
    status_topic: str = "homeassistant/status"
    # device: one retained config per camera (HA 2024.11+); entity: one per entity (any HA, other consumers).
    discovery: Literal["device", "entity"] = "device"


class MetricsConfig(_Section):
    """Prometheus /metrics and /healthz."""

    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"


class LoggingConfig(_Section):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["human", "json"] = "human"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def _device_entry(value: object) -> object:
    return {"guid": value} if isinstance(value, str) else value


DeviceMap = dict[str, Annotated[DeviceEntry, Field()]]


class Config(_Section):
    """The whole configuration file."""

    mqtt: MqttConfig = MqttConfig()
    cloud: CloudConfig
    devices: DeviceMap = Field(default_factory=dict)
    bridge: BridgeConfig = BridgeConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: object) -> object:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            for key in value:
                if not isinstance(key, str) or not DEVICE_ID_RE.match(key):
                    raise ValueError(f"device id {key!r} is not a single topic level")
            return {str(k): _device_entry(v) for k, v in value.items()}
        return value

    def guids(self) -> dict[str, str]:
        """Configured topic id -> FAssetGUID."""
        return {name: entry.guid for name, entry in self.devices.items()}

    def limits(self) -> Limits:
        """The command limits from `bridge.max_*`."""
        return Limits(self.bridge.max_count, self.bridge.max_duration, self.bridge.max_interval)

    @model_validator(mode="after")
    def _ids_do_not_collide(self) -> Config:
        for device in self.devices:
            why = collision(device, self.mqtt.client_id)
            if why is not None:
                # ConfigError passes pydantic untouched: the line names the key, not just `devices`.
                raise ConfigError(f"devices.{device}: {why}; choose another id")
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Config:
        limits = self.limits()
        for device, entry in self.devices.items():
            try:
                parse_settings(entry.defaults, limits)
            except InvalidCommand as exc:
                raise ValueError(f"devices.{device}.defaults: {exc.message} (limits are bridge.max_*)") from None
        return self

    def pending_states(self) -> bool:
        """Whether a `pending` state is published when a command is accepted (`bridge.publish_pending`)."""
        if self.bridge.publish_pending is not None:
            return self.bridge.publish_pending
        return self.homeassistant.enabled and bool(self.devices)

    def journal_file(self) -> Path:
        """Where the command journal lives."""
        if self.bridge.journal_path is not None:
            return self.bridge.journal_path.expanduser()
        state = Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser()
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", self.mqtt.client_id)
        # The broker and base topic are part of the name: a journal holds commands of one
        # session, and must never be replayed onto another broker's or topic tree's devices.
        where = hashlib.sha256(f"{self.mqtt.url}|{self.mqtt.base_topic}".encode()).hexdigest()[:8]
        return state / "capture-bridge" / f"journal-{safe_id}-{where}.sqlite"

    def settings_file(self) -> Path:
        """Where the settings users chose live: beside the journal, `<journal name>.settings<suffix>`."""
        journal = self.journal_file()
        return journal.with_name(f"{journal.stem}.settings{journal.suffix}")

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data, every secret replaced by `**********`."""
        return self.model_dump(mode="json")
