"""The router: feature routes by exact topic or filter; topics left in a session by older versions."""

from __future__ import annotations

from bridge.core.messages import Route
from bridge.mqtt.router import Router


def handler(topic: str, payload: bytes, retained: bool) -> None:
    """A route's handler (never called here)."""


def test_a_route_not_listened_to_is_unsubscribed_and_never_matched() -> None:
    router = Router([Route("b/+/capture/settings/set", handler), Route("b/bridge/settings", handler, listen=False),
                     Route("b/bridge/sync/x", handler)])
    assert router.subscriptions() == ["b/bridge/sync/x", "b/+/capture/settings/set"]
    assert router.unsubscriptions() == ["b/bridge/settings"]
    assert router.match("b/bridge/settings") is None
    route = router.match("b/truck-12/capture/settings/set")
    assert route is not None
    assert route.topic == "b/+/capture/settings/set"
