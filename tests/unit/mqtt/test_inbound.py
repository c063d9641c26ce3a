"""The inbound gate, against fakes: acknowledgements in order after the commit, holding under back-pressure."""

from __future__ import annotations

from collections.abc import Callable

from bridge.mqtt.inbound import PUBLISH_HIGH_WATER, InboundGate


class Harness:
    def __init__(self, durable: bool = True) -> None:
        self.acks: list[int] = []
        self.delivered: list[str] = []
        self.soon: list[Callable[[], None]] = []
        self.waiting = 0
        self.durable = durable
        self.gate: InboundGate[str] = InboundGate(
            ack=lambda mid, qos: self.acks.append(mid), pressing=lambda: self.waiting,
            deliver=self.delivered.append, call_soon=self.soon.append, before_ack=lambda: self.durable)

    def receive(self, mid: int, item: str, qos: int = 1) -> None:
        self.gate.offer(qos, self.gate.arrived(mid, qos), item)

    def pass_loop(self) -> None:
        soon, self.soon = self.soon, []
        for fn in soon:
            fn()


def test_acknowledged_in_order_once_per_loop_pass_after_the_commit() -> None:
    h = Harness()
    for mid in (5, 6, 7):
        h.receive(mid, f"c{mid}")
    assert h.delivered == ["c5", "c6", "c7"]
    assert h.acks == []  # not before the loop pass (the journal commit)
    h.pass_loop()
    assert h.acks == [5, 6, 7]


def test_nothing_acknowledged_while_the_journal_cannot_be_written() -> None:
    h = Harness(durable=False)
    h.receive(1, "a")
    h.pass_loop()
    assert h.acks == []
    h.durable = True
    h.gate.flush()
    assert h.acks == [1]


def test_under_back_pressure_messages_wait_in_order_and_unacknowledged() -> None:
    h = Harness()
    h.waiting = PUBLISH_HIGH_WATER + 1
    assert h.gate.held_back()
    h.receive(1, "a")
    h.receive(2, "b")
    h.receive(3, "zero", qos=0)  # QoS 0 is never held: the broker does not wait for it
    h.pass_loop()
    assert h.delivered == ["zero"]
    assert h.gate.held == 2
    assert h.acks == []
    h.waiting = PUBLISH_HIGH_WATER // 2 + 1  # still above the low-water mark
    h.gate.tick()
    assert h.gate.held == 2
    h.waiting = PUBLISH_HIGH_WATER // 2
    h.gate.tick()
    assert h.delivered == ["zero", "a", "b"]
    assert h.acks == [1, 2]


def test_a_message_behind_held_ones_waits_too() -> None:
    h = Harness()
    h.waiting = PUBLISH_HIGH_WATER + 1
    h.gate.held_back()
    h.receive(1, "a")
    h.waiting = 0
    h.gate.held_back()  # back-pressure over, but "a" is still held
    h.receive(2, "b")
    assert h.delivered == []
    h.gate.tick()
    assert h.delivered == ["a", "b"]


def test_a_lost_connection_forgets_what_it_cannot_acknowledge() -> None:
    h = Harness()
    h.waiting = PUBLISH_HIGH_WATER + 1
    h.gate.held_back()
    h.receive(1, "a")
    h.gate.connection_lost()
    assert h.gate.held == 0
    h.waiting = 0
    h.receive(9, "fresh")
    h.pass_loop()
    assert h.acks == [9]
    assert h.delivered == ["fresh"]
