"""Never twice, never silent: crashes with captures at the cloud, oversized commands, over-long ids.

Real processes: the bridge is killed with SIGKILL while the mock cloud holds its Instructions;
the next start answers what may have reached the cloud and sends it nothing again.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from bridge.sim.server import MockCloud
from tests.support.bridge_proc import StartBridge
from tests.support.broker import Broker
from tests.support.commands import finals_by_request
from tests.support.configs import fresh_guids
from tests.support.probe import Probe
from tests.support.waits import wait_until

UNKNOWN = "the cloud may have received it"
SLOW_CLOUD = {"cloud": {"read_timeout": 15.0}}


def test_kill_with_captures_at_the_cloud_sends_none_twice(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 4.0  # the cloud holds every Instruction while the bridge is killed
    bridge = start_bridge(SLOW_CLOUD)
    probe.subscribe(f"{base_topic}/+/capture/state")
    guids = fresh_guids(20)
    for i, guid in enumerate(guids):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"k-{i}"})
    probe.publish(f"{base_topic}/{guids[0]}/capture/set", {"request_id": "behind"})  # waits behind k-0
    wait_until(lambda: all(cloud.instructions_for(g) for g in guids), 20, "all 20 captures at the cloud")
    bridge.kill()
    assert finals_by_request(probe, base_topic) == {}
    cloud.latency = 0.0
    start_bridge(SLOW_CLOUD)
    wait_until(lambda: len(finals_by_request(probe, base_topic)) == 21, 30, "21 final states")
    finals = finals_by_request(probe, base_topic)
    assert all(len(v) == 1 for v in finals.values()), "exactly one final state per command"
    for i in range(20):
        state = finals[f"k-{i}"][0]
        assert (state["status"], state["error"], state["code"]) == ("error", "cloud_unreachable", None)
        assert state["message"].endswith(UNKNOWN)
    assert finals["behind"][0]["status"] == "ok"
    assert [len(cloud.instructions_for(g)) for g in guids] == [2] + [1] * 19  # k-0 and behind; one POST each


@pytest.fixture
def black_hole() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP server that takes requests and never answers: what it got is what left the bridge."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = server.accept()
                conn.settimeout(0.2)
                conns.append(conn)
            for conn in conns:
                with contextlib.suppress(TimeoutError, OSError):
                    data = conn.recv(65536)
                    if data:
                        received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/OpenApi", received
    stop.set()
    thread.join(5)
    for conn in conns:
        conn.close()
    server.close()


def test_a_kill_after_the_sent_mark_is_answered_and_never_sent(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud,
    black_hole: tuple[str, list[bytes]],
) -> None:
    url, received = black_hole
    cloud.default_behaviour = "ok"
    fixed = {"cloud": {"base_url": url, "token": "fixed-token", "username": None, "password": None,
                       "read_timeout": 30.0}}
    bridge = start_bridge(fixed)
    guid = fresh_guids(1)[0]
    state_topic = f"{base_topic}/{guid}/capture/state"
    probe.subscribe(state_topic)
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "lost-in-transit"})
    wait_until(lambda: any(b"ActiveNewPhotograph" in b for b in received), 10, "the Instruction on its way")
    bridge.kill()
    start_bridge()  # the real (mock) cloud this time
    state = probe.final_states(state_topic, timeout=15)[-1]
    assert state["request_id"] == "lost-in-transit"
    assert (state["error"], state["code"]) == ("cloud_unreachable", None)
    assert state["message"].endswith(UNKNOWN)
    assert cloud.instructions_for(guid) == []  # never sent again


def test_a_command_the_bridge_never_journaled_runs_once_after_a_kill(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    # Down before the command arrives: nothing journaled, nothing sent; the broker keeps it.
    cloud.default_behaviour = "ok"
    bridge = start_bridge()
    bridge.kill()
    guid = fresh_guids(1)[0]
    probe.subscribe(f"{base_topic}/{guid}/capture/state")
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "queued"})
    start_bridge()
    state = probe.final_states(f"{base_topic}/{guid}/capture/state", timeout=15)[-1]
    assert state["status"] == "ok"
    assert len(cloud.instructions_for(guid)) == 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("size", [100_000, 300_000, 1024 * 1024])
def test_oversized_commands_are_answered(
    start_bridge: StartBridge, broker: Broker, base_topic: str, protocol: str, size: int
) -> None:
    start_bridge({"mqtt": {"protocol": protocol}})
    client = Probe(broker.port, protocol=MQTTProtocolVersion.MQTTv5 if protocol == "5" else
                   MQTTProtocolVersion.MQTTv311)
    try:
        topic = f"{base_topic}/truck-12/capture/state"
        client.subscribe(topic)
        payload = json.dumps({"request_id": "big", "pad": "x" * size}).encode()
        client.publish(f"{base_topic}/truck-12/capture/set", payload)
        state = client.final_states(topic, timeout=15)[-1]
        assert state["error"] == "invalid_payload"
        assert "65536" in state["message"].replace(",", "")  # the message says the limit
    finally:
        client.close()


def test_an_id_too_long_for_its_state_topic_is_answered_on_the_bridge_topic(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    bridge = start_bridge()
    # The longest id a command topic can carry: its state topic is two bytes too long.
    device = "d" * (65_535 - len(f"{base_topic}//capture/set"))
    probe.subscribe(f"{base_topic}/bridge/rejected")
    probe.publish(f"{base_topic}/{device}/capture/set", {"request_id": "long-id"})
    [message] = probe.wait_for(lambda m: m.topic == f"{base_topic}/bridge/rejected", timeout=15)
    assert not message.retain
    state = message.json()
    assert (state["request_id"], state["error"]) == ("long-id", "unknown_device")
    wait_until(lambda: "long-id" in bridge.log_text() or "unknown_device" in bridge.log_text(), 10, "the log line")
    assert all(len(line.encode()) < 1024 for line in bridge.log_text().splitlines())
