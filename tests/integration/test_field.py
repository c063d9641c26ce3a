"""Answers in the field: what a new user meets with real brokers, flows and typos.

Each test goes through a real Mosquitto, the real bridge process and the mock cloud over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from bridge.sim.behaviours import Behaviour
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import StartBridge, deep_merge, gaps, log_lines, running_bridge
from tests.support.broker import Broker, free_port, wait_port
from tests.support.brokers import AmqttBroker, RabbitMqBroker, Unavailable
from tests.support.cli import bridge_cli
from tests.support.commands import ONLINE, is_online, send
from tests.support.configs import GUIDS, bridge_config
from tests.support.http import http_answer, http_get
from tests.support.probe import Probe
from tests.support.tls import broker_extra
from tests.support.waits import wait_until

# --- 1. a reused request_id after the de-duplication window is a new capture ---------------------


def test_request_id_after_the_window_is_a_new_capture_on_a_quiet_bridge(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    start_bridge({"bridge": {"dedupe_window": 1.0}})
    guid = GUIDS[Behaviour.OK]
    before = len(cloud.instructions_for(guid))  # the mock cloud is shared by the whole run
    first = send(probe, base_topic, "truck-12", {"request_id": "fixed"})
    again = send(probe, base_topic, "truck-12", {"request_id": "fixed"})
    assert again["file_id"] == first["file_id"]  # within the window: the first one's state
    assert len(cloud.instructions_for(guid)) == before + 1
    time.sleep(1.5)  # ok: the de-dup window itself must pass, with no other command in between
    later = send(probe, base_topic, "truck-12", {"request_id": "fixed"})
    assert len(cloud.instructions_for(guid)) == before + 2
    assert later["status"] == "ok"
    assert later["file_id"] != first["file_id"]
    assert later["timestamp"] != first["timestamp"]


# --- 2. a refused subscription is an error, 503 and no "online"; granted later, the bridge recovers --


DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
ADMIN_PASSWORD = "admin-pw-for-tests"


def _dynsec_broker(workdir: Path, command_filter: str) -> Broker:
    """A Mosquitto whose dynamic-security plugin refuses user "deaf" the subscription to `command_filter`.

    (Mosquitto's acl_file grants every SUBSCRIBE and filters at delivery; only the plugin refuses a SUBACK.)
    """
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None or not DYNSEC.exists():
        pytest.skip("mosquitto_ctrl or the dynamic-security plugin is missing (apt-get install mosquitto)")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "dynsec.json"
    subprocess.run([ctrl, "dynsec", "init", str(path), "admin", ADMIN_PASSWORD], check=True, capture_output=True,
                   timeout=30)
    data = json.loads(path.read_text())
    admin = data["clients"][0]
    # Same salt and hash as admin: "deaf" logs in with the admin password, but has only its own role.
    data["clients"].append(dict(admin, username="deaf", textName="bridge under test", roles=[{"rolename": "deaf"}]))
    data["roles"].append({"rolename": "deaf", "acls": [
        {"acltype": "subscribeLiteral", "topic": command_filter, "allow": False}]})
    data["defaultACLAccess"] = dict.fromkeys(data["defaultACLAccess"], True)
    path.write_text(json.dumps(data))
    extra = [f"plugin {DYNSEC}", f"plugin_opt_config_file {path}", broker_extra()]
    return Broker(workdir, extra="\n".join(filter(None, extra)))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_refused_subscription_is_an_error_503_and_never_online(
    tmp_path: Path, cloud: MockCloud, base_topic: str, protocol: str
) -> None:
    command_filter = f"{base_topic}/+/capture/set"
    broker = _dynsec_broker(tmp_path / "mosquitto", command_filter)
    broker.start()
    port = free_port()
    config = deep_merge(bridge_config(broker, cloud, base_topic, tmp_path), {
        "mqtt": {"username": "deaf", "password": ADMIN_PASSWORD, "protocol": protocol,
                 "reconnect_min": 0.3, "reconnect_max": 1.0},
        "metrics": {"port": port},
    })
    probe = Probe(broker.port)
    try:
        probe.subscribe(f"{base_topic}/bridge/state")
        with running_bridge(tmp_path / "bridge", config) as bridge:
            bridge.wait_log(f"refused the subscription to {command_filter}", timeout=15)
            line = log_lines(bridge, "refused the subscription")[0]
            assert " ERROR " in line
            assert ("(0x87)" if protocol == "5" else "(0x80)") in line  # the broker's reason code is named
            assert "Not authorized" in line or protocol != "5"
            status, body = http_answer(f"http://127.0.0.1:{port}/healthz")
            assert status == 503, body
            assert any(f"refused the subscription to {command_filter}" in p for p in json.loads(body)["mqtt"])
            # Retried with backoff, and never claims to be online while deaf.
            wait_until(lambda: len(log_lines(bridge, "refused the subscription")) >= 2, timeout=10, what="a retry")
            assert not [m for m in probe.messages if m.payload == ONLINE]
            # The broker's ACL is fixed at run time: the next retry is granted, and only now online.
            subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "admin",
                            "-P", ADMIN_PASSWORD, "dynsec", "removeRoleACL", "deaf", "subscribeLiteral",
                            command_filter], check=True, capture_output=True, timeout=30)
            probe.wait_for(is_online(base_topic), timeout=15)
            bridge.wait_log(f"granted the subscription to {command_filter}", timeout=5)
            wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=10, what="healthy")
            assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    finally:
        probe.close()
        broker.stop()


# --- 6. protocol auto; a port that is not MQTT is named ----------------------------------------


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[int]:
    """A private NATS server with MQTT (3.1.1 only) and JetStream; its MQTT port."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    client_port, mqtt_port = free_port(), free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: 127.0.0.1:{client_port}\nserver_name: t{mqtt_port}\n'
                    f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n')
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(mqtt_port, timeout=20)
        yield mqtt_port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_auto_falls_back_to_311_on_a_broker_without_mqtt5(
    nats: int, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    config = bridge_config(Broker(tmp_path / "unused"), cloud, base_topic, tmp_path)
    config["mqtt"]["url"] = f"mqtt://127.0.0.1:{nats}"
    assert "protocol" not in config["mqtt"]  # the default
    probe = Probe(nats, protocol=MQTTProtocolVersion.MQTTv311)
    try:
        probe.subscribe(f"{base_topic}/bridge/state")
        with running_bridge(tmp_path / "bridge", config) as bridge:
            probe.wait_for(lambda m: m.topic == f"{base_topic}/bridge/state" and m.payload == ONLINE, timeout=20)
            connected = log_lines(bridge, "connected to")
            assert connected, bridge.log_text()
            assert "MQTT 3.1.1, auto: the broker refused MQTT 5" in connected[0]
            assert " INFO " in connected[0]
            state = send(probe, base_topic, "truck-12", {"request_id": "via-nats"})
            assert state["status"] == "ok"
            assert "TLS" not in bridge.log_text()
            assert " ERROR " not in bridge.log_text()
    finally:
        probe.close()


def test_shared_group_on_a_broker_that_ignores_share_is_an_error(
    nats: int, cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    port = free_port()
    config = bridge_config(Broker(tmp_path / "unused"), cloud, base_topic, tmp_path)
    config["mqtt"].update(url=f"mqtt://127.0.0.1:{nats}", shared_group="grp")
    config["metrics"] = {"port": port}
    with running_bridge(tmp_path / "bridge", config) as bridge:
        bridge.wait_log("delivered no probe command", timeout=20)
        line = log_lines(bridge, "delivered no probe command")[0]
        assert " ERROR " in line
        assert "mqtt.shared_group" in line
        status, body = http_answer(f"http://127.0.0.1:{port}/healthz")
        assert status == 503
        assert "probe command" in body


class _Http400(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1024)
        self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class _Silent(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1024)
        self.server.done.wait(30)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.done = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.done.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


def test_an_http_port_is_named_within_the_connect_timeout(
    cloud: MockCloud, base_topic: str, tmp_path: Path, broker: Broker
) -> None:
    with _server(_Http400) as port:
        config = bridge_config(broker, cloud, base_topic, tmp_path)
        config["mqtt"].update(url=f"mqtt://127.0.0.1:{port}", reconnect_min=3.0, reconnect_max=3.0)
        started = time.monotonic()
        with running_bridge(tmp_path / "bridge", config) as bridge:
            bridge.wait_log("not an MQTT broker", timeout=10)
            took = time.monotonic() - started
            wait_until(lambda: len(log_lines(bridge, "not an MQTT broker")) >= 2, timeout=10, what="a second attempt")
            lines = log_lines(bridge, "not an MQTT broker")
        line = lines[0]
        # The delay printed is the one slept (the jitter is applied before it is printed).
        printed = float(line.rsplit("next try in ", 1)[1].rstrip("s"))
        assert 2.4 <= printed <= 3.6
        assert abs(gaps(lines[:2])[0] - printed) < 0.3, (lines, printed)
        assert " ERROR " in line
        assert f"127.0.0.1:{port}" in line
        assert "received 'HTTP/1.1 400 Bad Request'" in line
        assert "TLS" not in line
        assert took < 10


def test_a_silent_port_is_named_within_the_connect_timeout(
    cloud: MockCloud, base_topic: str, tmp_path: Path, broker: Broker
) -> None:
    with _server(_Silent) as port:
        config = bridge_config(broker, cloud, base_topic, tmp_path)
        config["mqtt"].update(url=f"mqtt://127.0.0.1:{port}", connect_timeout=2)
        with running_bridge(tmp_path / "bridge", config) as bridge:
            bridge.wait_log("received nothing within 2s", timeout=8)
            line = log_lines(bridge, "received nothing")[0]
        assert f"127.0.0.1:{port}" in line
        assert " ERROR " in line


# --- 3. clearing a retained command (zero-length payload) is no command ---------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_clearing_a_retained_command_leaves_the_last_state_alone(
    start_bridge: StartBridge, probe: Probe, base_topic: str, broker: Broker, protocol: str
) -> None:
    bridge = start_bridge({"mqtt": {"protocol": protocol}}, args=("--log-level", "DEBUG"))
    state_topic = f"{base_topic}/truck-12/capture/state"
    ok = send(probe, base_topic, "truck-12", {"request_id": "real"})
    assert ok["status"] == "ok"
    # The usual way to clear a retained message, with the real client.
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t",
                    f"{base_topic}/truck-12/capture/set", "-r", "-n", "-q", "1"], check=True, timeout=10)
    # A command after it, through the same subscription, is a barrier: its state comes after any
    # state the empty message would have caused.
    assert send(probe, base_topic, "van-3", {})["status"] == "error"
    assert [m.json()["request_id"] for m in probe.on_topic(state_topic)] == ["real"]
    bridge.wait_log("ignored an empty message", timeout=5)
    assert " DEBUG " in log_lines(bridge, "ignored an empty message")[0]
    late = Probe(broker.port)
    try:
        late.subscribe(state_topic)
        assert late.wait_for(lambda m: m.topic == state_topic)[0].json()["request_id"] == "real"
    finally:
        late.close()


# --- 4. states of commands that named no real device are not retained -----------------------------


def test_unknown_device_states_are_not_retained(
    start_bridge: StartBridge, probe: Probe, base_topic: str, broker: Broker
) -> None:
    start_bridge()
    typo = send(probe, base_topic, "truck-1Z", {"request_id": "typo"})
    assert typo["error"] == "unknown_device"
    guid_typo = send(probe, base_topic, GUIDS[Behaviour.UNKNOWN], {})
    assert guid_typo["error"] == "no_such_device"
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    late = Probe(broker.port)
    try:
        late.subscribe(f"{base_topic}/+/capture/state")
        # Retained messages come right after the SUBACK, together: truck-12's proves they were sent.
        late.wait_for(lambda m: m.topic == f"{base_topic}/truck-12/capture/state")
        assert {m.topic for m in late.messages} == {f"{base_topic}/truck-12/capture/state"}
    finally:
        late.close()


def test_capture_cli_and_mqtt_agree_on_an_unknown_device(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    start_bridge()
    command = {"type": "photo", "count": 2, "request_id": "same"}
    over_mqtt = send(probe, base_topic, "truck-1Z", command)
    config = tmp_path / "cli.yaml"
    config.write_text(json.dumps({"cloud": {"base_url": cloud.url, "token": "t-123456"}}))
    result = bridge_cli("capture", "truck-1Z", "--config", str(config), "--payload", json.dumps(command))
    assert result.returncode == 1, result.stderr
    from_cli = json.loads(result.stdout)
    for state in (over_mqtt, from_cli):
        state.pop("timestamp")
    assert from_cli == over_mqtt


# --- 5. two instances with one client_id -----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_bridges_with_one_client_id_get_one_error_and_back_off(
    start_bridge: StartBridge, base_topic: str, protocol: str
) -> None:
    shared = {"mqtt": {"client_id": f"same-{base_topic}", "protocol": protocol,
                       "reconnect_min": 0.5, "reconnect_max": 4.0}}
    first = start_bridge(shared)
    second = start_bridge(shared, wait_online=False)
    bridges = (first, second)
    needle = "took over the session"
    wait_until(lambda: all(log_lines(b, needle) for b in bridges), timeout=20,
               what=lambda: "both bridges name the take-over:\n" + "\n".join(b.log_text()[-1500:] for b in bridges))
    watch_from = time.monotonic()
    counts = [len(log_lines(b, "connected to")) for b in bridges]
    time.sleep(8)  # ok: observing a fixed window for how often they reconnect
    for bridge, before in zip(bridges, counts, strict=True):
        errors = [line for line in bridge.log_text().splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors  # one ERROR, not one per reconnect
        assert f"client_id 'same-{base_topic}'" in errors[0]
        assert "mqtt.shared_group" in errors[0]
        assert "own mqtt.client_id" in errors[0]
        assert "Unspecified error" not in bridge.log_text()  # disconnects say what happened
        # Backing off toward reconnect_max (4 s): a handful of reconnects, not one a second.
        assert len(log_lines(bridge, "connected to")) - before <= 5, bridge.log_text()[-3000:]
    assert time.monotonic() - watch_from >= 8


# --- 7. every user mistake is one line naming what to fix ----------------------------------------


def _one_line(result: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_run_without_config_names_the_flag(tmp_path: Path) -> None:
    _one_line(bridge_cli("run", cwd=tmp_path), "--config")


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bad_journal_path_names_the_setting(tmp_path: Path, command: str, cloud: MockCloud) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"cloud": {"base_url": cloud.url, "token": "t-123456"},
                                  "bridge": {"journal_path": "/proc/nope/journal.sqlite"}}))
    _one_line(bridge_cli(command, "--config", str(config)), "bridge.journal_path", "/proc/nope/journal.sqlite")


def test_busy_metrics_port_names_the_setting(tmp_path: Path, cloud: MockCloud) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(json.dumps({"cloud": {"base_url": cloud.url, "token": "t-123456"},
                                      "metrics": {"port": port},
                                      "bridge": {"journal_path": str(tmp_path / "j.sqlite")}}))
        _one_line(bridge_cli("run", "--config", str(config)), "metrics.port", str(port), "already in use")


def test_mock_cloud_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _one_line(bridge_cli("mock-cloud", "--port", str(port)), "--port", str(port), "already in use", code=1)


@pytest.mark.parametrize(("yaml_text", "needles"), [
    ("cloud:\n  token: t\n  base_url: 'https://cloud.example.com/OpenApi?x=1'\n", ("cloud.base_url", "query")),
    ("cloud:\n  token: t\nmqtt:\n  base_topic: /devices\n", ("mqtt.base_topic", "'devices'")),
    ("cloud:\n  token: t\nmqtt:\n  password: 123456\n", ("mqtt.password", "quote it")),
    ("cloud:\n  token: t\n   oops: 1\n", ("line 3", "mapping values are not allowed")),
    ("cloud:\n  token: t\nbridge:\n  journal: false\nmqtt:\n  url: mqtts://127.0.0.1:8883\n  ca_file: /nope/ca.pem\n",
     ("mqtt.ca_file", "/nope/ca.pem")),
])
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_config_mistakes_are_refused_by_check_config_and_run_alike(
    tmp_path: Path, yaml_text: str, needles: tuple[str, ...], command: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    line = _one_line(bridge_cli(command, "--config", str(config)), *needles)
    assert "123456" not in line


def test_cloud_404_says_check_the_base_url(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    bridge = start_bridge({"cloud": {"base_url": cloud.url + "/Wrong", "token": "t-123456",
                                     "username": None, "password": None}})
    state = send(probe, base_topic, "truck-12", {})
    assert state["error"] == "cloud_unreachable"
    assert "HTTP 404" in state["message"]
    assert "check cloud.base_url" in state["message"]
    assert "Traceback" not in bridge.log_text()


# --- 8. the cloud login is checked at start -------------------------------------------------------


def test_wrong_cloud_password_is_one_error_at_start_and_the_bridge_keeps_running(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    port = free_port()
    bridge = start_bridge({"cloud": {"password": "wrong-password"}, "metrics": {"port": port}})
    bridge.wait_log("cloud login as demo failed", timeout=10)
    errors = [line for line in bridge.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "check cloud.username and cloud.password" in errors[0]
    assert "wrong-password" not in bridge.log_text()
    status, body = http_answer(f"http://127.0.0.1:{port}/healthz")
    assert status == 200  # the broker side is fine; the cloud's status is reported beside it
    health = json.loads(body)
    assert health["mqtt"] == "ok"
    assert health["cloud"].startswith("login_failed")
    assert send(probe, base_topic, "truck-12", {})["error"] == "login_failed"


def test_good_cloud_login_is_said_at_start(start_bridge: StartBridge) -> None:
    bridge = start_bridge()
    bridge.wait_log("cloud login ok as demo", timeout=10)


# --- 9. DEBUG tells a user debugging a flow what happened ----------------------------------------


def test_debug_log_follows_a_command(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    bridge = start_bridge(args=("--log-level", "DEBUG"))
    payload = json.dumps({"count": 2, "request_id": "dbg-1"})
    assert send(probe, base_topic, "truck-12", payload)["status"] == "ok"
    bridge.wait_log("state published on", timeout=5)
    received = log_lines(bridge, "command received on")
    assert received, bridge.log_text()[-2000:]
    line = received[-1]
    assert f"{base_topic}/truck-12/capture/set: {len(payload)} bytes" in line
    assert "retain=False, dup=False" in line
    assert "device=truck-12 request_id=dbg-1" in line
    assert " DEBUG " in line
    start = log_lines(bridge, "cloud call: ActiveNewPhotograph")
    assert start
    assert GUIDS[Behaviour.OK] in start[-1]
    done = log_lines(bridge, "cloud call done in")
    assert done
    assert re.search(r"done in \d+\.\d{3}s: Result 200, ok", done[-1]), done[-1]
    published = log_lines(bridge, f"state published on {base_topic}/truck-12/capture/state")
    assert published
    assert "retained" in published[-1]


# --- 10. a retained command queued for the session while the bridge was down is not executed -----


def test_retained_command_queued_while_down_is_not_executed_on_311(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    overrides = {"mqtt": {"protocol": "3.1.1"}}
    first = start_bridge(overrides)
    assert first.stop() == 0
    command_topic = f"{base_topic}/truck-12/capture/set"
    state_topic = f"{base_topic}/truck-12/capture/state"
    probe.subscribe(state_topic)
    guid = GUIDS[Behaviour.OK]
    before = len(cloud.instructions_for(guid))
    # Published retained while the bridge is down: the broker keeps it as the retained message
    # AND queues it for the bridge's persistent session, where 3.1.1 delivers it without the flag.
    probe.publish(command_topic, {"request_id": "stale"}, retain=True)
    try:
        second = start_bridge(overrides)
        second.wait_log("dropped 1 queued copy(ies) of the retained command", timeout=10)
        # A live command after it is answered: the bridge runs, and the stale one got no state.
        assert send(probe, base_topic, "truck-12", {"request_id": "live"})["request_id"] == "live"
        assert [m.json()["request_id"] for m in probe.on_topic(state_topic)] == ["live"]
        assert len(cloud.instructions_for(guid)) == before + 1
    finally:
        probe.publish(command_topic, b"", retain=True)  # clear it


def test_auto_falls_back_to_311_when_the_broker_ignores_mqtt5(
    cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    try:
        amqtt = AmqttBroker(tmp_path / "amqtt")
    except Unavailable as exc:
        pytest.skip(str(exc))
    amqtt.start()
    try:
        config = bridge_config(Broker(tmp_path / "unused"), cloud, base_topic, tmp_path)
        config["mqtt"].update(url=f"mqtt://127.0.0.1:{amqtt.port}", connect_timeout=2)
        probe = Probe(amqtt.port, protocol=MQTTProtocolVersion.MQTTv311)
        try:
            probe.subscribe(f"{base_topic}/bridge/state")
            with running_bridge(tmp_path / "bridge", config) as bridge:
                probe.wait_for(lambda m: m.topic == f"{base_topic}/bridge/state" and m.payload == ONLINE,
                               timeout=20)
                assert log_lines(bridge, "did not answer an MQTT 5 CONNECT within 2s; trying MQTT 3.1.1")
                assert "MQTT 3.1.1, auto: the broker refused MQTT 5" in log_lines(bridge, "connected to")[0]
                assert " ERROR " not in bridge.log_text()
        finally:
            probe.close()
    finally:
        amqtt.close()


def test_a_broker_closing_on_mqtt5_is_named_without_a_tls_hint(
    cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    """RabbitMQ 3.10 closes the socket on an MQTT 5 CONNECT: auto falls back; forced 5 names mqtt.protocol."""
    try:
        rabbit = RabbitMqBroker(tmp_path / "rabbitmq")
    except Unavailable as exc:
        pytest.skip(str(exc))
    rabbit.start()
    try:
        config = bridge_config(Broker(tmp_path / "unused"), cloud, base_topic, tmp_path)
        config["mqtt"]["url"] = f"mqtt://127.0.0.1:{rabbit.port}"
        with running_bridge(tmp_path / "auto", config) as bridge:
            bridge.wait_log("connected to", timeout=20)
            assert log_lines(bridge, "closed the connection without answering an MQTT 5 CONNECT; trying MQTT 3.1.1")
            assert "MQTT 3.1.1, auto" in log_lines(bridge, "connected to")[0]
        config["mqtt"]["protocol"] = "5"
        with running_bridge(tmp_path / "forced", config) as bridge:
            bridge.wait_log("without answering an MQTT 5 CONNECT", timeout=20)
            line = log_lines(bridge, "without answering an MQTT 5 CONNECT")[0]
        assert " ERROR " in line
        assert "mqtt.protocol" in line
        assert "TLS" not in line
        assert "mqtts" not in line
    finally:
        rabbit.close()


def test_shared_group_on_mosquitto_is_verified_without_a_false_alarm(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    probe.subscribe(f"{base_topic}/+/capture/state")
    # Two members: each one's probe may reach the other, which echoes it.
    members = [start_bridge({"mqtt": {"shared_group": "grp", "client_id": f"{base_topic}-{i}"}},
                            args=("--log-level", "DEBUG")) for i in range(2)]
    for bridge in members:
        bridge.wait_log("shared subscription honoured", timeout=15)
    for bridge in members:
        noisy = [line for line in bridge.log_text().splitlines() if " ERROR " in line or " WARNING " in line]
        assert not noisy, noisy
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    assert not [m.topic for m in probe.messages if "capture-bridge-probe" in m.topic]  # probes get no state


def test_shared_group_on_a_broker_without_shared_subscriptions_is_an_error(
    cloud: MockCloud, base_topic: str, tmp_path: Path
) -> None:
    """amqtt 0.12 grants $share/... and drops what is published to it: only the probe command tells."""
    try:
        amqtt = AmqttBroker(tmp_path / "amqtt")
    except Unavailable as exc:
        pytest.skip(str(exc))
    amqtt.start()
    port = free_port()
    try:
        config = bridge_config(Broker(tmp_path / "unused"), cloud, base_topic, tmp_path)
        config["mqtt"].update(url=f"mqtt://127.0.0.1:{amqtt.port}", protocol="3.1.1", shared_group="grp")
        config["metrics"] = {"port": port}
        with running_bridge(tmp_path / "bridge", config) as bridge:
            bridge.wait_log("delivered no probe command through $share/grp/", timeout=20)
            line = log_lines(bridge, "delivered no probe command")[0]
            assert " ERROR " in line
            assert "mqtt.shared_group" in line
            status, body = http_answer(f"http://127.0.0.1:{port}/healthz")
            assert status == 503
            assert "probe command" in body
    finally:
        amqtt.close()
