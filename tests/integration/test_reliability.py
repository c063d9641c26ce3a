"""Nothing lost: crashes, broker restarts, cloud faults, duplicates and hostile input, with real processes."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

import pytest

from bridge.sim.behaviours import Behaviour, Fault
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import StartBridge
from tests.support.broker import Broker
from tests.support.commands import finals_by_request
from tests.support.configs import GUIDS, fresh_guids
from tests.support.probe import Probe, Received
from tests.support.waits import wait_until


def is_final(base: str) -> Callable[[Received], bool]:
    def check(m: Received) -> bool:
        return (m.topic.startswith(base + "/") and m.topic.endswith("/capture/state") and bool(m.payload)
                and m.json()["status"] != "pending" and not m.retain)
    return check


def assert_still_serves(probe: Probe, base: str, cloud: MockCloud) -> None:
    """After a fault is gone, a new command is answered ok."""
    cloud.fault = Fault.NONE
    cloud.latency = 0.0
    guid = str(uuid.uuid4())
    cloud.default_behaviour = "ok"
    probe.subscribe(f"{base}/{guid}/capture/state")
    probe.publish(f"{base}/{guid}/capture/set", {"request_id": "alive"})
    assert probe.final_states(f"{base}/{guid}/capture/state")[0]["status"] == "ok"


def test_sigkill_mid_load_loses_nothing_and_sends_nothing_twice(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 1.5
    config = {"bridge": {"max_in_flight": 64}}
    bridge = start_bridge(config)
    probe.subscribe(f"{base_topic}/+/capture/state")
    guids = fresh_guids(50)
    before = cloud.instruction_count
    for i, guid in enumerate(guids):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"k-{i}"})
    wait_until(lambda: cloud.instruction_count >= before + 50, what="all 50 captures at the cloud")
    bridge.kill()
    assert finals_by_request(probe, base_topic) == {}
    start_bridge(config)
    probe.wait_for(is_final(base_topic), count=50, timeout=30)
    finals = finals_by_request(probe, base_topic)
    assert sorted(finals) == sorted(f"k-{i}" for i in range(50))
    assert all(len(v) == 1 for v in finals.values()), "exactly one final state per command"
    # All 50 were at the cloud when the bridge died: each is answered as an unknown outcome and
    # none is sent again (a second photo nobody asked for).
    assert all(v[0]["error"] == "cloud_unreachable" and v[0]["code"] is None for v in finals.values())
    assert all(v[0]["message"].endswith("the cloud may have received it") for v in finals.values())
    assert all(len(cloud.instructions_for(g)) == 1 for g in guids)


def test_commands_sent_while_bridge_down_are_executed(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    bridge = start_bridge()
    assert bridge.stop() == 0
    probe.subscribe(f"{base_topic}/+/capture/state")
    for i, guid in enumerate(fresh_guids(5)):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"q-{i}"})
    start_bridge()
    probe.wait_for(is_final(base_topic), count=5, timeout=20)
    assert sorted(finals_by_request(probe, base_topic)) == [f"q-{i}" for i in range(5)]


def test_broker_restart_mid_load(
    start_bridge: StartBridge, broker: Broker, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 1.0
    start_bridge()
    guids = fresh_guids(30)
    before = cloud.instruction_count
    for i, guid in enumerate(guids):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"b-{i}"})
    wait_until(lambda: cloud.instruction_count >= before + 30, what="captures at the cloud")
    broker.restart()
    # States published while the broker was away arrive after the bridge reconnects; they are retained.
    checker = Probe(broker.port)
    try:
        checker.subscribe(f"{base_topic}/+/capture/state")
        checker.wait_for(lambda m: m.topic.endswith("/capture/state") and m.json()["status"] != "pending",
                         count=30, timeout=30)
        seen = {m.json()["request_id"] for m in checker.messages if m.topic.endswith("/capture/state")}
        assert seen == {f"b-{i}" for i in range(30)}
    finally:
        checker.close()
    # And the bridge still serves new commands.
    fresh = Probe(broker.port)
    try:
        fresh.subscribe(f"{base_topic}/truck-12/capture/state")
        cloud.latency = 0.0
        fresh.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "after"})
        fresh.wait_for(lambda m: m.json().get("request_id") == "after" and m.json()["status"] == "ok", timeout=20)
    finally:
        fresh.close()


def test_graceful_shutdown_finishes_in_flight(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 1.0
    bridge = start_bridge()
    probe.subscribe(f"{base_topic}/+/capture/state")
    before = cloud.instruction_count
    for i, guid in enumerate(fresh_guids(10)):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"g-{i}"})
    wait_until(lambda: cloud.instruction_count >= before + 10, what="captures at the cloud")
    assert bridge.stop() == 0
    finals = finals_by_request(probe, base_topic)
    assert len(finals) == 10
    assert all(v[0]["status"] == "ok" for v in finals.values())
    offline = [m for m in probe.messages if m.topic == f"{base_topic}/bridge/state"][-1]
    assert offline.json() == {"state": "offline"}


@pytest.mark.parametrize("fault", [Fault.HTTP_503, Fault.HTTP_429])
def test_not_now_answers_are_retried(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, fault: Fault
) -> None:
    start_bridge()
    cloud.retry_after = 0.2
    cloud.fault = fault
    cloud.fault_count = 1
    before = len(cloud.instructions_for(GUIDS[Behaviour.OK]))
    probe.subscribe(f"{base_topic}/truck-12/capture/state")
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "retry"})
    state = probe.final_states(f"{base_topic}/truck-12/capture/state")[0]
    assert state["status"] == "ok"
    assert state["message"] == "ins send ok (after 2 tries)"
    assert len(cloud.instructions_for(GUIDS[Behaviour.OK])) == before + 2
    assert_still_serves(probe, base_topic, cloud)


@pytest.mark.parametrize("fault", [Fault.RESET, Fault.CLOSE, Fault.HTTP_500, Fault.HTTP_502, Fault.HTTP_504])
def test_failures_after_sending_are_never_retried(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, fault: Fault
) -> None:
    start_bridge()
    cloud.fault = fault
    before = len(cloud.instructions_for(GUIDS[Behaviour.OK]))
    probe.subscribe(f"{base_topic}/truck-12/capture/state")
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "once"})
    state = probe.final_states(f"{base_topic}/truck-12/capture/state")[0]
    assert (state["status"], state["error"], state["code"]) == ("error", "cloud_unreachable", None)
    assert state["message"].endswith("the cloud may have received it"), state["message"]
    assert len(cloud.instructions_for(GUIDS[Behaviour.OK])) == before + 1, "a capture that may have fired, sent again"
    assert_still_serves(probe, base_topic, cloud)


def test_hang_past_timeout_is_not_retried(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    start_bridge({"cloud": {"read_timeout": 0.5}})
    cloud.fault = Fault.HANG
    before = cloud.instruction_count
    probe.subscribe(f"{base_topic}/truck-12/capture/state")
    probe.publish(f"{base_topic}/truck-12/capture/set", {})
    state = probe.final_states(f"{base_topic}/truck-12/capture/state")[0]
    assert (state["error"], state["code"]) == ("cloud_unreachable", None)
    assert cloud.instruction_count == before + 1, "a call that may have reached the device is not sent twice"
    assert_still_serves(probe, base_topic, cloud)


def test_token_storm_shares_one_login(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    start_bridge()
    probe.subscribe(f"{base_topic}/+/capture/state")
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "warm"})
    probe.wait_for(is_final(base_topic))
    cloud.expire_tokens()
    cloud.latency = 0.3
    logins = cloud.login_count
    guids = fresh_guids(20)
    for i, guid in enumerate(guids):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"s-{i}"})
    probe.wait_for(is_final(base_topic), count=21, timeout=20)
    finals = finals_by_request(probe, base_topic)
    assert all(finals[f"s-{i}"][0]["status"] == "ok" for i in range(20))
    assert cloud.login_count == logins + 1
    assert_still_serves(probe, base_topic, cloud)


def test_duplicate_request_id_fires_once(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 0.5
    start_bridge()
    guid = fresh_guids(1)[0]
    probe.subscribe(f"{base_topic}/{guid}/capture/state")
    for _ in range(3):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "same"})
    probe.wait_for(is_final(base_topic))
    # A different request_id afterwards proves the duplicates were handled before it.
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "other"})
    probe.wait_for(lambda m: is_final(base_topic)(m) and m.json()["request_id"] == "other", timeout=15)
    assert len(cloud.instructions_for(guid)) == 2


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{" + b'"request_id": "' + b"x" * 70000 + b'"}', "larger than"),
        (b'{"request_id": "\xc3\x28"}', "UTF-8"),
        (b"[" * 30000 + b"]" * 30000, "JSON"),
    ],
    ids=["too-large", "bad-utf8", "deep-nesting"],
)
def test_hostile_payloads(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, payload: bytes, fragment: str
) -> None:
    start_bridge()
    probe.subscribe(f"{base_topic}/truck-12/capture/state")
    probe.publish(f"{base_topic}/truck-12/capture/set", payload)
    state = probe.final_states(f"{base_topic}/truck-12/capture/state")[0]
    assert state["error"] == "invalid_payload"
    assert fragment in state["message"]
    assert_still_serves(probe, base_topic, cloud)


def test_over_long_device_id(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge()
    device = "d" * 300
    probe.subscribe(f"{base_topic}/{device}/capture/state")
    probe.publish(f"{base_topic}/{device}/capture/set", {})
    state = probe.final_states(f"{base_topic}/{device}/capture/state")[0]
    assert state["error"] == "unknown_device"


def test_per_device_order_end_to_end(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 0.1
    start_bridge()
    guid = fresh_guids(1)[0]
    probe.subscribe(f"{base_topic}/{guid}/capture/state")
    for i in range(5):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"o-{i}"})
    finals = probe.final_states(f"{base_topic}/{guid}/capture/state", count=5)
    assert [s["request_id"] for s in finals] == [f"o-{i}" for i in range(5)]
    calls = [r for r in cloud.requests if r.body and r.body.get("FAssetGUID") == guid]
    starts = [r.at for r in calls]
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(starts)), "one capture at a time per device"


def test_threads_flat(start_bridge: StartBridge) -> None:
    """The bridge does not spawn a thread per command (asyncio, not a thread pool)."""
    bridge = start_bridge()
    assert bridge.proc is not None
    with open(f"/proc/{bridge.proc.pid}/status") as f:
        status = f.read()
    threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    assert threads <= 8
