"""What the MQTT adapter refuses before paho sees it: Response Topics outside the policy, bad topics."""

from __future__ import annotations

import pytest

from bridge.mqtt.diagnostics import response_topic_refusal, unpublishable

# --- Response Topic policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "refused"),
    [
        ("replies/abc", False),
        ("replies/#", True),
        ("replies/+/x", True),
        ("$SYS/broker", True),
        ("devices/bridge/state", True),
        ("devices/other/capture/state", True),
        ("devices", True),
        ("homeassistant/sensor/x/config", True),
        ("zigbee2mqtt/lamp/set", False),
        ("", True),
    ],
)
def test_response_topic_default_policy(topic: str, refused: bool) -> None:
    assert (response_topic_refusal(topic, ["#"], ["devices", "homeassistant"]) is not None) == refused


def test_response_topic_allow_list() -> None:
    allowed = ["replies/+", "app/#"]
    assert response_topic_refusal("replies/1", allowed, ["devices"]) is None
    assert response_topic_refusal("app/a/b", allowed, ["devices"]) is None
    assert "mqtt.response_topics" in str(response_topic_refusal("zigbee2mqtt/lamp/set", allowed, ["devices"]))
    assert response_topic_refusal("devices/x", ["#"], ["devices"]) is not None


# --- topics paho would refuse ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "why"),
    [("a/#", "wildcard"), ("a/+/b", "wildcard"), ("", "empty"), ("x" * 65536, "65,535"), ("a/\ud800", "UTF-8")],
)
def test_a_topic_paho_would_refuse_is_refused_before_it_is_queued(topic: str, why: str) -> None:
    assert why in (unpublishable(topic) or "")


def test_a_publishable_topic_passes() -> None:
    assert unpublishable("devices/truck-12/capture/state") is None
    assert unpublishable("x" * 65535) is None
