"""Availability: per-instance topics, the shared view that one instance going away never turns offline."""

from __future__ import annotations

import json
from typing import Any

from bridge.config import Config
from bridge.core import topics
from bridge.features.availability import OFFLINE, ONLINE, Availability, last_will
from bridge.features.base import Bus, register
from bridge.mqtt.router import Router
from tests.support.features import Sent, on

SHARED = "devices/bridge/state"


class Session:
    def __init__(self) -> None:
        self.evidence: list[str] = []

    def another_instance(self, evidence: str) -> None:
        self.evidence.append(evidence)


def config(client_id: str = "a", group: str | None = "g") -> Config:
    return Config.model_validate({"cloud": {"token": "t"}, "mqtt": {"client_id": client_id, "shared_group": group}})


def make(client_id: str = "a", group: str | None = "g") -> tuple[Availability, Sent, Session, Bus]:
    sent: Sent = []

    def send(topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False, on_acked: Any = None,
             bulk: bool = False) -> bool:
        sent.append((topic, payload, retain))
        if on_acked is not None:
            on_acked()
        return True

    session = Session()
    feature = Availability(config(client_id, group), send, session)
    bus = Bus()
    register(bus, [feature])
    return feature, sent, session, bus


def deliver(bus: Bus, topic: str, payload: dict[str, Any]) -> None:
    route = Router(bus.routes).match(topic)
    assert route is not None
    route.handler(topic, json.dumps(payload).encode(), False)


def test_a_single_bridge_keeps_the_plain_payloads_and_will() -> None:
    assert last_will(config(group=None)) == (SHARED, b'{"state":"offline"}')
    feature, sent, _, bus = make(group=None)
    bus.listening(True)
    feature.stop()
    assert [p for t, p, r in sent if t == SHARED and r] == [ONLINE, OFFLINE]
    own = on(sent, "devices/bridge/instance/a/state")
    assert [o["state"] for o in own] == ["online", "offline"]


def test_a_member_that_hears_commands_answers_an_offline_on_the_shared_topic_and_marks_the_gone_one() -> None:
    _, sent, _, bus = make("a")
    deliver(bus, "devices/bridge/instance/b/state", {"state": "online", "run": "b1"})
    bus.listening(True)
    sent.clear()
    deliver(bus, SHARED, {"state": "offline", "instance": "b"})  # b's will
    assert (SHARED, ONLINE, True) in sent
    assert on(sent, "devices/bridge/instance/b/state") == [{"state": "offline"}]
    # A will naming an instance never seen online writes nothing of its own: no topic made up.
    sent.clear()
    deliver(bus, SHARED, {"state": "offline", "instance": "forged"})
    assert sent == [(SHARED, ONLINE, True)]


def test_nothing_is_reasserted_before_listening_or_while_stopping() -> None:
    feature, sent, _, bus = make("a")
    deliver(bus, SHARED, {"state": "offline"})  # the retained offline of the last shutdown, read at start
    assert sent == []
    bus.listening(True)
    feature.stop()
    sent.clear()
    deliver(bus, SHARED, {"state": "offline", "instance": "b"})
    assert sent == []


def test_a_disconnect_stops_the_answers_until_listening_again() -> None:
    _, sent, _, bus = make("a")
    bus.listening(True)
    bus.disconnected()
    sent.clear()
    deliver(bus, SHARED, {"state": "offline"})
    assert sent == []


def test_another_run_online_on_our_own_topic_after_ours_was_acknowledged_is_a_takeover() -> None:
    _, sent, session, bus = make("a", group=None)
    own = topics.instance_state_topic("devices", "a")
    run = on(sent, own)  # nothing yet
    assert run == []
    deliver(bus, own, {"state": "online", "run": "other"})  # before ours: a stale retained one, no proof
    assert session.evidence == []
    bus.listening(True)
    mine = on(sent, own)[-1]["run"]
    deliver(bus, own, {"state": "online", "run": mine})
    assert session.evidence == []
    deliver(bus, own, {"state": "online", "run": "other"})
    assert len(session.evidence) == 1
    assert own in session.evidence[0]


def test_our_own_topic_said_offline_by_another_member_is_corrected() -> None:
    _, sent, _, bus = make("a")
    bus.listening(True)
    sent.clear()
    deliver(bus, topics.instance_state_topic("devices", "a"), {"state": "offline"})
    assert [o["state"] for o in on(sent, "devices/bridge/instance/a/state")] == ["online"]


def test_a_deaf_member_says_offline_naming_itself() -> None:
    _, sent, _, bus = make("a")
    bus.listening(False)
    assert on(sent, SHARED) == [{"state": "offline", "instance": "a"}]


def test_instance_topics_are_one_level_and_distinct() -> None:
    assert topics.instance_state_topic("d", "plain-id_1.x") == "d/bridge/instance/plain-id_1.x/state"
    odd = {topics.instance_state_topic("d", c) for c in ("a/b", "a+b", "a#b", "a_b")}
    assert len(odd) == 4
    for topic in odd:
        assert topic.count("/") == 4
        assert "+" not in topic
        assert "#" not in topic


def test_a_flood_of_forged_offlines_costs_one_online_per_round_trip() -> None:
    acks: list[Any] = []
    sent: Sent = []

    def send(topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False, on_acked: Any = None,
             bulk: bool = False) -> bool:
        sent.append((topic, payload, retain))
        if on_acked is not None:
            acks.append(on_acked)
        return True

    feature = Availability(config("a"), send, Session())
    bus = Bus()
    register(bus, [feature])
    bus.listening(True)
    for ack in acks:
        ack()
    sent.clear()
    for _ in range(1000):
        deliver(bus, SHARED, {"state": "offline"})
    assert sent == [(SHARED, ONLINE, True)]
    acks[-1]()  # the broker has it: one more for the offlines that came meanwhile
    assert sent == [(SHARED, ONLINE, True)] * 2
    acks[-1]()
    assert len(sent) == 2
