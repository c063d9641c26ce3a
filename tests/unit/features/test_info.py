"""The bridge info feature: `<base>/bridge/info` only when it changed."""

from __future__ import annotations

import json
from typing import Any

from bridge.config import Config
from bridge.features.info import BridgeInfo

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
GUID2 = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"
Sent = list[tuple[str, bytes, bool]]


def config_of(devices: dict[str, Any] | None = None, **bridge: Any) -> Config:
    return Config.model_validate(
        {"cloud": {"token": "t"}, "devices": devices if devices is not None else {"truck-12": GUID},
         "bridge": bridge}
    )


def recorder(sent: Sent) -> Any:
    def send(topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False,
             on_acked: Any = None, bulk: bool = False) -> bool:
        sent.append((topic, payload, retain))
        return True

    return send


def on(sent: Sent, topic: str) -> list[Any]:
    return [json.loads(p) if p else None for t, p, _ in sent if t == topic]


class Idle:
    in_flight = 0
    backlog = 0
    connected = True


def make(devices: dict[str, Any] | None = None, **bridge: Any) -> tuple[BridgeInfo, Sent]:
    sent: Sent = []
    return BridgeInfo(config_of(devices, **bridge), recorder(sent), Idle(), Idle()), sent


def test_bridge_info_only_when_it_changed() -> None:
    companion, sent = make()
    companion.publish_info(0, 0)
    companion.publish_info(0, 0)
    companion.publish_info(3, 1)
    companion.publish_info(3, 1, force=True)
    infos = on(sent, "devices/bridge/info")
    assert [(i["in_flight"], i["backlog"]) for i in infos] == [(0, 0), (3, 1), (3, 1)]
    assert all(i["version"] for i in infos)
