"""A feature's surroundings in a unit test: a Config, a publish function that records, what it sent."""

from __future__ import annotations

import json
from typing import Any

from bridge.config import Config
from tests.support.fakes import GUID

# What a feature published: (topic, payload, retain), in order.
Sent = list[tuple[str, bytes, bool]]


def config_of(devices: dict[str, Any] | None = None, *, homeassistant: dict[str, Any] | None = None,
              **bridge: Any) -> Config:
    """A valid config with these devices (default: truck-12), `bridge` and `homeassistant` settings."""
    return Config.model_validate(
        {"cloud": {"token": "t"}, "devices": devices if devices is not None else {"truck-12": GUID},
         "bridge": bridge, "homeassistant": homeassistant or {}}
    )


def recorder(sent: Sent) -> Any:
    """A publish function, as the MQTT side hands the features one, that appends to `sent`."""
    def send(topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False,
             on_acked: Any = None, bulk: bool = False) -> bool:
        sent.append((topic, payload, retain))
        return True

    return send


def on(sent: Sent, topic: str) -> list[Any]:
    """The payloads sent to `topic`, decoded (None for an empty, clearing payload)."""
    return [json.loads(p) if p else None for t, p, _ in sent if t == topic]
