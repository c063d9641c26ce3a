"""The bridge info feature: `<base>/bridge/info` only when it changed."""

from __future__ import annotations

from typing import Any

from bridge.features.info import BridgeInfo
from tests.support.features import Sent, config_of, on, recorder


class Idle:
    in_flight = 0
    backlog = 0
    connected = True


def make(devices: dict[str, Any] | None = None, **bridge: Any) -> tuple[BridgeInfo, Sent]:
    sent: Sent = []
    return BridgeInfo(config_of(devices, **bridge), recorder(sent), Idle(), Idle()), sent


def test_bridge_info_only_when_it_changed() -> None:
    feature, sent = make()
    feature.publish_info(0, 0)
    feature.publish_info(0, 0)
    feature.publish_info(3, 1)
    feature.publish_info(3, 1, force=True)
    infos = on(sent, "devices/bridge/info")
    assert [(i["in_flight"], i["backlog"]) for i in infos] == [(0, 0), (3, 1), (3, 1)]
    assert all(i["version"] for i in infos)
    assert on(sent, "devices/bridge/instance/capture-bridge/info") == infos  # this instance's own, alike
