"""Availability through a real broker: one instance going away never marks the others offline."""

from __future__ import annotations

import pytest

from bridge.core import topics
from tests.support.bridge_proc import StartBridge
from tests.support.commands import send
from tests.support.probe import Probe
from tests.support.waits import wait_until


def last_state(probe: Probe, topic: str) -> str | None:
    found = [m for m in probe.on_topic(topic) if m.payload]
    return str(found[-1].json()["state"]) if found else None


def offline_then_online(probe: Probe, topic: str, since: int) -> bool:
    """After message number `since` on `topic`: an `offline`, and the last one says `online`."""
    states = [m.json()["state"] for m in probe.on_topic(topic)[since:] if m.payload]
    return "offline" in states and states[-1] == "online"


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_member_that_stops_leaves_the_group_online(
    start_bridge: StartBridge, probe: Probe, base_topic: str, how: str
) -> None:
    shared = topics.availability_topic(base_topic)
    ids = [f"a-{base_topic}", f"b-{base_topic}"]
    probe.subscribe(f"{base_topic}/bridge/#")
    first, second = (start_bridge({"mqtt": {"shared_group": "g", "client_id": c}}) for c in ids)
    own = [topics.instance_state_topic(base_topic, c) for c in ids]
    wait_until(lambda: [last_state(probe, t) for t in own] == ["online", "online"], 15, "both members online")
    since = len(probe.on_topic(shared))
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.kill()
    wait_until(lambda: offline_then_online(probe, shared, since), 10,
               lambda: f"{shared} online again: {[m.payload for m in probe.on_topic(shared)]}")
    wait_until(lambda: last_state(probe, own[0]) == "offline", 10, "the stopped member's own topic offline")
    assert last_state(probe, own[1]) == "online"
    assert last_state(probe, shared) == "online"
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"  # the member that stays answers
    assert "took over" not in second.log_text()


def test_two_bridges_on_one_base_topic_do_not_mark_each_other_offline(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    shared = topics.availability_topic(base_topic)
    ids = [f"x-{base_topic}", f"y-{base_topic}"]
    probe.subscribe(f"{base_topic}/bridge/#")
    first, second = (start_bridge({"mqtt": {"client_id": c}}) for c in ids)
    since = len(probe.on_topic(shared))
    assert first.stop() == 0
    wait_until(lambda: offline_then_online(probe, shared, since), 10, f"{shared} online again")
    assert last_state(probe, topics.instance_state_topic(base_topic, ids[0])) == "offline"
    assert last_state(probe, topics.instance_state_topic(base_topic, ids[1])) == "online"
    # A single bridge keeps the plain payloads: its `offline` names no instance.
    assert b'{"state":"offline"}' in [m.payload for m in probe.on_topic(shared)[since:]]
    assert second.stop() == 0
    wait_until(lambda: last_state(probe, shared) == "offline", 10, "offline once the last one stopped")
