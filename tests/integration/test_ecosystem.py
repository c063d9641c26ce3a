"""The bridge in its ecosystem: Home Assistant discovery, scale-out through shared subscriptions,
TLS, broker authentication, Prometheus metrics and JSON logs.

Everything goes through the real bridge process, a real Mosquitto and the mock cloud over HTTP.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge import __version__
from bridge.sim.behaviours import Behaviour
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import BridgeProcess, StartBridge, deep_merge, gaps, log_lines, running_bridge
from tests.support.broker import Broker, free_port
from tests.support.commands import ONLINE, is_online, send
from tests.support.configs import GUIDS, bridge_config
from tests.support.http import http_answer, http_get, metric_value
from tests.support.probe import Probe, Received
from tests.support.tls import Pki, broker_extra, client_context, make_password_file, make_pki
from tests.support.waits import wait_until

# --- helpers -----------------------------------------------------------------------------------


def on_topic(topic: str) -> Callable[[Received], bool]:
    """Matches messages on one topic."""
    return lambda m: m.topic == topic


def wait_online(probe: Probe, base: str, timeout: float = 20.0) -> None:
    """Wait for the bridge on `base` to announce itself online."""
    probe.subscribe(f"{base}/bridge/state")
    probe.wait_for(is_online(base), timeout=timeout)


# --- 1. Home Assistant discovery ----------------------------------------------------------------


def test_home_assistant_discovery_buttons_and_rediscovery(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    status_topic = f"{prefix}/status"
    start_bridge({
        "homeassistant": {"enabled": True, "prefix": prefix, "status_topic": status_topic, "discovery": "entity"},
        "devices": {"front-cam": {"guid": GUIDS[Behaviour.OK], "name": "Front camera"}},
    })
    probe.subscribe(f"{prefix}/#")

    def ours(m: Received) -> bool:
        if not (m.topic.startswith(f"{prefix}/") and m.topic.endswith("/config") and m.payload):
            return False
        return bool(m.json().get("device", {}).get("name") == "Front camera")

    found = probe.wait_for(ours, count=14, timeout=10)
    configs = {m.topic: m.json() for m in found}
    assert len(configs) == 14, sorted(configs)
    for topic in configs:
        assert re.fullmatch(rf"{prefix}/[a-z_]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config", topic), topic
    buttons = {c["name"]: c for t, c in configs.items() if t.startswith(f"{prefix}/button/")}
    assert sorted(buttons) == ["Capture", "Record video", "Take photo"]
    command_topic = f"{base_topic}/front-cam/capture/set"
    for button in buttons.values():
        assert button["command_topic"] == command_topic
        assert button["retain"] is False  # a retained command would never run (and must not refire)
    availability_topics = set()
    for config in configs.values():
        availability = config.get("availability") or [{"topic": config.get("availability_topic")}]
        availability_topics |= {a["topic"] for a in availability}
    assert availability_topics == {f"{base_topic}/bridge/state"}
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == 14
    # The same HA device for all of them, under the bridge device.
    assert len({json.dumps(c["device"]["identifiers"]) for c in configs.values()}) == 1
    bridge_device = {c["device"]["via_device"] for c in configs.values()}
    assert len(bridge_device) == 1

    # Pressing the buttons the way HA does: payload_press on command_topic.
    state_topic = f"{base_topic}/front-cam/capture/state"
    probe.subscribe(state_topic)
    for name, ftype in (("Take photo", 1), ("Record video", 2)):
        button = buttons[name]
        before = len([m for m in probe.on_topic(state_topic) if m.json()["status"] != "pending"])
        probe.publish(button["command_topic"], button["payload_press"], qos=int(button.get("qos", 0)),
                      retain=bool(button["retain"]))
        state = probe.final_states(state_topic, count=before + 1, timeout=15)[-1]
        assert state["status"] == "ok", state
        assert state["request"]["FType"] == ftype
    # HA users see a running capture: with discovery on, a pending state comes first.
    statuses = [m.json()["status"] for m in probe.on_topic(state_topic)]
    assert statuses[-4:] == ["pending", "ok", "pending", "ok"], statuses

    # HA restarted: it says `online` on its status topic and the bridge announces everything again.
    counts = {topic: len(probe.on_topic(topic)) for topic in configs}
    probe.publish(status_topic, b"offline")  # not a reason to announce
    probe.publish(status_topic, b"online")
    for topic, n in counts.items():
        probe.wait_for(on_topic(topic), count=n + 1, timeout=10)
    # The bridge takes messages in order and announces synchronously: once a command sent after `online`
    # is answered, every announcement `offline` or `online` caused has reached us.
    finals = len([m for m in probe.on_topic(state_topic) if m.json()["status"] != "pending"])
    probe.publish(command_topic, buttons["Take photo"]["payload_press"])
    probe.final_states(state_topic, count=finals + 1, timeout=15)
    for topic, n in counts.items():
        again = probe.on_topic(topic)
        # Exactly one more: `offline`, which came first, announced nothing.
        assert len(again) == n + 1, topic
        assert not again[-1].retain  # a live copy
        assert again[-1].json()["unique_id"] == configs[topic]["unique_id"]


def test_settings_shape_the_next_capture_and_survive_a_restart(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    overrides = {"devices": {"truck-12": {"guid": GUIDS[Behaviour.OK], "defaults": {"resolution": "480p"}}}}
    bridge = start_bridge(overrides)
    settings_topic = f"{base_topic}/truck-12/capture/settings"
    state_topic = f"{base_topic}/truck-12/capture/state"
    probe.subscribe(settings_topic)
    probe.subscribe(state_topic)
    first = probe.wait_for(on_topic(settings_topic), timeout=10)[-1].json()
    assert first == {"camera": "main", "type": "photo", "count": 1, "duration": 10, "resolution": "480p",
                     "interval": 0}

    probe.publish(f"{base_topic}/truck-12/capture/settings/set", {"count": 3, "FInterval": 2})
    probe.publish(f"{base_topic}/truck-12/capture/settings/set", {"count": 0})  # refused, nothing changes
    shown = probe.wait_for(on_topic(settings_topic), count=3, timeout=10)
    assert shown[1].json()["count"] == 3
    assert shown[2].json() == shown[1].json()
    probe.publish(f"{base_topic}/truck-12/capture/set", {"resolution": "1080p"}, qos=1)
    state = probe.final_states(state_topic, timeout=15)[-1]
    assert state["request"] == {"FCameraID": "0", "FType": 1, "FCount": 3, "FDuration": 0, "FResolution": 3,
                                "FInterval": 2}
    assert "count: must be between 1 and 100, got 0" in bridge.log_text()

    # Restarted, and a command was waiting for it on the broker: it runs with the settings.
    bridge.stop()
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "after-restart"}, qos=1)
    start_bridge(overrides)
    state = probe.wait_for(
        lambda m: m.topic == state_topic and m.json().get("request_id") == "after-restart"
        and m.json()["status"] != "pending", timeout=20,
    )[-1].json()
    assert state["request"]["FCount"] == 3
    assert state["request"]["FResolution"] == 1  # the config's default, never chosen otherwise


def test_a_capture_taken_back_after_a_crash_keeps_the_devices_settings(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    bridge = start_bridge({"cloud": {"read_timeout": 15.0}})
    settings_topic = f"{base_topic}/truck-12/capture/settings"
    state_topic = f"{base_topic}/truck-12/capture/state"
    probe.subscribe(settings_topic)
    probe.subscribe(state_topic)
    probe.publish(f"{base_topic}/truck-12/capture/settings/set", {"count": 4})
    probe.wait_for(lambda m: m.topic == settings_topic and m.json()["count"] == 4, timeout=10)
    cloud.latency = 3.0
    before = cloud.instruction_count
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "crash-1"}, qos=1)
    wait_until(lambda: cloud.instruction_count > before, timeout=10, what="the capture reached the cloud")
    bridge.kill()  # the journal keeps the command; the next start answers it (it may be at the cloud)
    cloud.latency = 0.0
    start_bridge({"cloud": {"read_timeout": 15.0}})
    state = probe.wait_for(
        lambda m: m.topic == state_topic and not m.retain and m.json().get("request_id") == "crash-1"
        and m.json()["status"] != "pending", timeout=20,
    )[-1].json()
    assert state["error"] == "cloud_unreachable"  # never sent twice
    assert state["request"]["FCount"] == 4  # the restored setting, not the built-in 1


def test_bridge_info_shows_captures_in_flight(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    info_topic = f"{base_topic}/bridge/info"
    probe.subscribe(info_topic)
    start_bridge({"cloud": {"read_timeout": 15.0}})
    first = probe.wait_for(on_topic(info_topic), timeout=10)[-1].json()
    assert first == {"version": __version__, "in_flight": 0, "backlog": 0}
    cloud.latency = 6.0  # longer than the info interval (5 s)
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "slow-1"}, qos=1)
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "slow-2"}, qos=1)
    busy = probe.wait_for(lambda m: m.topic == info_topic and m.json()["in_flight"] == 1, timeout=10)[-1]
    assert busy.json()["backlog"] == 1  # the second waits for the first: one capture per device at a time


def test_devices_removed_from_the_config_leave_home_assistant(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    ha = {"enabled": True, "prefix": prefix, "status_topic": f"{prefix}/status", "discovery": "entity"}
    two = {"homeassistant": ha, "devices": {"keep": GUIDS[Behaviour.OK], "gone": GUIDS[Behaviour.BUSY]}}
    bridge = start_bridge(two)
    probe.subscribe(f"{prefix}/#")
    probe.wait_for(lambda m: "/gone_" in m.topic and bool(m.payload), count=14, timeout=10)
    bridge.stop()
    start_bridge({"homeassistant": ha, "devices": {"keep": GUIDS[Behaviour.OK]}})
    cleared = probe.wait_for(lambda m: "/gone_" in m.topic and not m.payload, count=14, timeout=10)
    assert len({m.topic for m in cleared}) == 14
    assert all("/keep_" not in m.topic for m in probe.messages if not m.payload)


# --- 2. Shared subscriptions / scale-out --------------------------------------------------------


def _start_group(start_bridge: StartBridge, base: str, tmp_path: Path, n: int) -> list[BridgeProcess]:
    return [
        start_bridge({
            "mqtt": {"client_id": f"bridge-{base}-{i}", "shared_group": "capture"},
            "bridge": {"journal_path": str(tmp_path / f"journal-{i}.sqlite")},
            "logging": {"level": "INFO"},
        })
        for i in range(n)
    ]


def _instructions_by_guid(cloud: MockCloud, guids: set[str]) -> Counter[str]:
    return Counter(
        str(r.body["FAssetGUID"])
        for r in list(cloud.requests)
        if r.path.endswith("/Instruction") and r.body is not None and r.body.get("FAssetGUID") in guids
    )


def _is_state(base: str) -> Callable[[Received], bool]:
    return lambda m: m.topic.startswith(f"{base}/") and m.topic.endswith("/capture/state") and bool(m.payload)


def _barrier(probe: Probe, base: str) -> None:
    # Everything the (acknowledged) bridges published before this reaches the probe before it.
    marker = f"{base}/barrier/{uuid.uuid4().hex}"
    probe.subscribe(marker)
    probe.publish(marker, b"x")
    probe.wait_for(lambda m: m.topic == marker, timeout=10)


def _check_exactly_once(probe: Probe, cloud: MockCloud, base: str, guids: dict[str, str]) -> None:
    finals = [m.json() for m in probe.messages if _is_state(base)(m)]
    finals = [s for s in finals if s["status"] != "pending"]
    per_request = Counter(s["request_id"] for s in finals)
    assert set(per_request) == set(guids), f"missing {len(set(guids) - set(per_request))} request(s)"
    duplicates = {r: n for r, n in per_request.items() if n != 1}
    assert not duplicates, f"{len(duplicates)} request(s) answered more than once"
    assert all(s["status"] == "ok" for s in finals)
    assert all(s["asset_guid"] == guids[s["request_id"]] for s in finals)
    sent = _instructions_by_guid(cloud, set(guids.values()))
    assert sum(sent.values()) == len(guids)
    assert set(sent.values()) == {1}


def test_shared_subscription_spreads_work_exactly_once(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 0.05
    bridges = _start_group(start_bridge, base_topic, tmp_path, 3)
    probe.subscribe(f"{base_topic}/+/capture/state")
    guids = {f"r{i}": str(uuid.uuid4()) for i in range(300)}
    for request_id, guid in guids.items():
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": request_id})
    probe.wait_for(_is_state(base_topic), count=300, timeout=30)
    # Stop all three (a clean stop waits for outstanding acknowledgements), then look for stragglers.
    for bridge in bridges:
        bridge.signal(signal.SIGTERM)
    assert [bridge.wait(20) for bridge in bridges] == [0, 0, 0]
    _barrier(probe, base_topic)
    _check_exactly_once(probe, cloud, base_topic, guids)
    done = [len(log_lines(b, "capture ok")) for b in bridges]
    assert sum(done) == 300, done
    assert sum(1 for n in done if n > 0) >= 2, f"the work was not shared: {done}"


def test_shared_subscription_survives_losing_an_instance(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 0.05
    bridges = _start_group(start_bridge, base_topic, tmp_path, 3)
    probe.subscribe(f"{base_topic}/+/capture/state")
    guids = {f"r{i}": str(uuid.uuid4()) for i in range(300)}
    items = list(guids.items())
    for request_id, guid in items[:100]:
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": request_id})
    # Scale in: one instance leaves with a clean SIGTERM while commands are running.
    assert bridges[0].stop(timeout=20) == 0
    for request_id, guid in items[100:]:
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": request_id})
    try:
        probe.wait_for(_is_state(base_topic), count=300, timeout=10)
    finally:
        for bridge in bridges[1:]:
            bridge.signal(signal.SIGTERM)
        for bridge in bridges[1:]:
            bridge.wait(20)
    _barrier(probe, base_topic)
    _check_exactly_once(probe, cloud, base_topic, guids)
    done = [len(log_lines(b, "capture ok")) for b in bridges]
    assert done[1] > 0
    assert done[2] > 0
    assert sum(done) == 300, done


# --- 3. TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with server and client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Broker]:
    """Mosquitto with only a TLS listener."""
    b = Broker(tmp_path_factory.mktemp("mosquitto-tls"), tls=pki.server_files(), extra=broker_extra()).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Broker]:
    """Mosquitto with a TLS listener that requires a client certificate."""
    b = Broker(tmp_path_factory.mktemp("mosquitto-mtls"), tls=pki.server_files(require_certificate=True),
               extra=broker_extra()).start()
    yield b
    b.stop()


def test_tls_with_ca_file_round_trip(
    tls_broker: Broker, pki: Pki, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    assert tls_broker.url.startswith("mqtts://127.0.0.1:")
    config = deep_merge(bridge_config(tls_broker, cloud, base_topic, tmp_path),
                        {"mqtt": {"ca_file": str(pki.ca_cert)}})
    probe = Probe(tls_broker.port, tls=client_context(pki.ca_cert))
    try:
        with running_bridge(tmp_path / "bridge", config) as bridge:
            wait_online(probe, base_topic)
            state = send(probe, base_topic, "truck-12", {"request_id": "tls-1"})
            assert (state["status"], state["request_id"]) == ("ok", "tls-1")
            assert f"connected to 127.0.0.1:{tls_broker.port}" in bridge.log_text()
        assert "Traceback" not in bridge.log_text()
    finally:
        probe.close()


def test_tls_untrusted_broker_is_a_clear_error(
    tls_broker: Broker, pki: Pki, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    # No ca_file: the system CAs do not know our test CA.
    config = deep_merge(bridge_config(tls_broker, cloud, base_topic, tmp_path),
                        {"mqtt": {"reconnect_min": 0.5, "reconnect_max": 1.0}})
    probe = Probe(tls_broker.port, tls=client_context(pki.ca_cert))
    try:
        probe.subscribe(f"{base_topic}/bridge/state")
        with running_bridge(tmp_path / "bridge", config) as bridge:
            bridge.wait_log("certificate verify failed", timeout=15)
            wait_until(lambda: len(log_lines(bridge, "certificate verify failed")) >= 2, timeout=10,
                       what="a second attempt")
            assert bridge.proc is not None
            assert bridge.proc.poll() is None, "the bridge must keep trying, not exit"
            log = bridge.log_text()
        assert "Traceback" not in log
        for line in log_lines(bridge, "certificate verify failed"):
            assert f"127.0.0.1:{tls_broker.port}" in line
        assert not [m for m in probe.messages if m.payload == ONLINE]
    finally:
        probe.close()


def test_tls_insecure_connects_without_ca(
    tls_broker: Broker, pki: Pki, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    config = deep_merge(bridge_config(tls_broker, cloud, base_topic, tmp_path), {"mqtt": {"tls_insecure": True}})
    probe = Probe(tls_broker.port, tls=client_context(pki.ca_cert))
    try:
        with running_bridge(tmp_path / "bridge", config):
            wait_online(probe, base_topic)
            assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    finally:
        probe.close()


def test_tls_client_certificate(
    mtls_broker: Broker, pki: Pki, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    config = deep_merge(bridge_config(mtls_broker, cloud, base_topic, tmp_path), {
        "mqtt": {"ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
    })
    probe = Probe(mtls_broker.port, tls=client_context(pki.ca_cert, pki.client_cert, pki.client_key))
    try:
        with running_bridge(tmp_path / "bridge", config):
            wait_online(probe, base_topic)
            assert send(probe, base_topic, "truck-12", {"request_id": "mtls"})["request_id"] == "mtls"
    finally:
        probe.close()


def test_tls_missing_client_certificate_is_reported(
    mtls_broker: Broker, pki: Pki, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    config = deep_merge(bridge_config(mtls_broker, cloud, base_topic, tmp_path),
                        {"mqtt": {"ca_file": str(pki.ca_cert), "reconnect_min": 0.5, "reconnect_max": 1.0}})
    probe = Probe(mtls_broker.port, tls=client_context(pki.ca_cert, pki.client_cert, pki.client_key))
    try:
        probe.subscribe(f"{base_topic}/bridge/state")
        with running_bridge(tmp_path / "bridge", config) as bridge:
            # Under TLS 1.3 the client's handshake completes before the server checks for a certificate:
            # the rejection is an alert on the first read. It must still be logged, and backed off.
            wait_until(lambda: len(log_lines(bridge, "certificate")) >= 3, timeout=10,
                       what=lambda: f"three certificate errors in the log:\n{bridge.log_text()[-2000:]}")
            assert bridge.proc is not None
            assert bridge.proc.poll() is None, "the bridge must keep trying, not exit"
            errors = log_lines(bridge, "certificate")
        log = bridge.log_text()
        for line in errors:
            assert f"broker 127.0.0.1:{mtls_broker.port}" in line, line
            assert " ERROR " in line or " WARNING " in line, line
        # Delays 0.5 then 1.0 s (+-20 %): the second gap is a backed-off one, not reconnect_min again.
        assert gaps(errors[:3])[1] >= 0.75, errors[:3]
        assert "Traceback" not in log
        assert not [m for m in probe.messages if m.payload == ONLINE]
    finally:
        probe.close()


# --- 4. Authentication --------------------------------------------------------------------------

BRIDGE_USER, BRIDGE_PASSWORD = "bridge", "Br1dge-pass-7f3e"
PROBE_USER, PROBE_PASSWORD = "probe", "Pr0be-pass-91ac"
WRONG_PASSWORD = "Wr0ng-pass-c4d2"


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto with a password file and no anonymous access."""
    workdir = tmp_path_factory.mktemp("mosquitto-auth")
    passwords = make_password_file(workdir / "passwd", {BRIDGE_USER: BRIDGE_PASSWORD, PROBE_USER: PROBE_PASSWORD})
    b = Broker(workdir, password_file=passwords, extra=broker_extra()).start()
    yield b
    b.stop()


def test_auth_good_credentials(auth_broker: Broker, cloud: MockCloud, base_topic: str, tmp_path: Path) -> None:
    config = deep_merge(bridge_config(auth_broker, cloud, base_topic, tmp_path),
                        {"mqtt": {"username": BRIDGE_USER, "password": BRIDGE_PASSWORD}})
    probe = Probe(auth_broker.port, username=PROBE_USER, password=PROBE_PASSWORD)
    try:
        with running_bridge(tmp_path / "bridge", config) as bridge:
            wait_online(probe, base_topic)
            assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
        assert BRIDGE_PASSWORD not in bridge.log_text()
    finally:
        probe.close()


def test_auth_bad_password_backs_off_with_one_clear_line(
    auth_broker: Broker, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    config = deep_merge(bridge_config(auth_broker, cloud, base_topic, tmp_path), {
        "mqtt": {"username": BRIDGE_USER, "password": WRONG_PASSWORD, "reconnect_min": 0.5, "reconnect_max": 2.0},
    })
    probe = Probe(auth_broker.port, username=PROBE_USER, password=PROBE_PASSWORD)
    try:
        probe.subscribe(f"{base_topic}/bridge/state")
        with running_bridge(tmp_path / "bridge", config) as bridge:
            bridge.wait_log("refused the connection", timeout=15)
            window_end = time.monotonic() + 4.0
            while time.monotonic() < window_end:  # watch for 4 s: no online, still running
                assert bridge.proc is not None
                assert bridge.proc.poll() is None, bridge.log_text()
                assert not [m for m in probe.messages if m.payload == ONLINE]
                time.sleep(0.1)  # ok: observing a fixed window, not synchronising
            attempts = log_lines(bridge, "refused the connection")
        log = bridge.log_text()
        # Attempts at ~0, 0.5, 1.5, 3.5 s (+-20 % jitter) after the first: a backoff, not a tight loop.
        assert 2 <= len(attempts) <= 6, attempts
        if len(attempts) >= 3:
            between = gaps(attempts)
            assert between[-1] >= 1.5 * between[0], between  # the delay grows
        for line in attempts:
            assert "Not authorized" in line
            assert f"127.0.0.1:{auth_broker.port}" in line
        # One line per attempt: nothing else warns about the connection.
        noisy = [line for line in log.splitlines()
                 if re.search(r"\b(WARNING|ERROR)\b", line) and "refused the connection" not in line]
        assert not noisy, noisy
        assert "Traceback" not in log
        assert WRONG_PASSWORD not in log
    finally:
        probe.close()


# --- 5. Metrics and health ----------------------------------------------------------------------


def test_metrics_and_healthz(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    port = free_port()
    start_bridge({"metrics": {"port": port}})
    status, body = http_answer(f"http://127.0.0.1:{port}/healthz")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"
    wait_until(lambda: json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1])["cloud"] != "not checked yet",
               timeout=10, what="the start-up cloud login")
    assert json.loads(http_get(f"http://127.0.0.1:{port}/healthz")[1]) == {
        "status": "ok", "mqtt": "ok", "cloud": "login ok as demo"}
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    ok = metric_value(text, "capture_bridge_commands_total", status="ok", error="")
    assert ok is not None
    assert ok >= 1
    assert metric_value(text, "capture_bridge_mqtt_connected") == 1.0
    assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404


def test_healthz_503_when_broker_unreachable(cloud: MockCloud, broker: Broker, base_topic: str,
                                             tmp_path: Path) -> None:
    port = free_port()
    config = deep_merge(bridge_config(broker, cloud, base_topic, tmp_path), {
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
        "metrics": {"port": port},
    })
    with running_bridge(tmp_path / "bridge", config) as bridge:
        status, body = http_answer(f"http://127.0.0.1:{port}/healthz")
        assert status == 503, body
        bridge.wait_log("cannot reach broker")
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 503
        text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert metric_value(text, "capture_bridge_mqtt_connected") == 0.0


def test_healthz_follows_the_broker(cloud: MockCloud, base_topic: str, tmp_path: Path) -> None:
    own = Broker(tmp_path / "mosquitto", extra=broker_extra()).start()
    port = free_port()
    config = deep_merge(bridge_config(own, cloud, base_topic, tmp_path), {"metrics": {"port": port}})
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with running_bridge(tmp_path / "bridge", config):
            http_answer(url)
            wait_until(lambda: http_get(url)[0] == 200, timeout=15, what="healthy while connected")
            own.stop()
            wait_until(lambda: http_get(url)[0] == 503, timeout=15, what="unhealthy without the broker")
            own.start()
            wait_until(lambda: http_get(url)[0] == 200, timeout=15, what="healthy again after the broker returned")
    finally:
        own.stop()


# --- 6. JSON logs -------------------------------------------------------------------------------


def test_json_logs(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    bridge = start_bridge(args=("--log-format", "json"))
    assert send(probe, base_topic, "truck-12", {"request_id": "json-1"})["status"] == "ok"
    assert send(probe, base_topic, "dev-offline", {"request_id": "json-2"})["error"] == "device_offline"
    bridge.wait_log("capture ok")
    assert bridge.stop() == 0
    lines = [line for line in bridge.log_text().splitlines() if line.strip()]
    assert lines
    entries = []
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    ok = [e for e in entries if e["message"].startswith("capture ok")]
    assert len(ok) == 1
    assert (ok[0]["device"], ok[0]["request_id"], ok[0]["level"]) == ("truck-12", "json-1", "info")
    failed = [e for e in entries if e.get("request_id") == "json-2"]
    assert len(failed) == 1
    assert (failed[0]["device"], failed[0]["error"], failed[0]["level"]) == ("dev-offline", "device_offline",
                                                                              "warning")
