"""End to end: a real Mosquitto, the real bridge process, the mock cloud over real HTTP.

Every row of the cloud API's documented error table is produced here through the broker and HTTP.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import uuid
from typing import Any

import pytest

from bridge.infra.settings_db import SettingsDb
from bridge.sim.behaviours import DEMO_PASSWORD, Behaviour, Fault
from bridge.sim.server import MockCloud
from tests.support import commands
from tests.support.bridge_proc import StartBridge
from tests.support.cli import bridge_cli
from tests.support.configs import GUIDS
from tests.support.probe import Probe

# Each command here waits the probe's usual 10 s for its final state.
send = functools.partial(commands.send, timeout=10.0)


def test_photo_round_trip(start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud) -> None:
    start_bridge()
    state = send(probe, base_topic, "truck-12", {"type": "photo", "count": 3, "interval": 2, "request_id": "r-1"})
    assert state["status"] == "ok"
    assert state["code"] == 200
    assert state["error"] is None
    assert state["device"] == "truck-12"
    assert state["asset_guid"] == GUIDS[Behaviour.OK]
    assert state["request_id"] == "r-1"
    assert state["request"] == {"FCameraID": "0", "FType": 1, "FCount": 3, "FDuration": 0,
                                "FResolution": 2, "FInterval": 2}
    assert state["file_id"]
    assert state["terminal_num"]
    assert state["reply"].startswith("(")
    sent = cloud.instructions_for(GUIDS[Behaviour.OK])[-1]
    assert sent["FAction"] == "ActiveNewPhotograph"
    assert sent["FT_GpActiveNewPhotograph"] == state["request"]


def test_state_is_retained(start_bridge: StartBridge, probe: Probe, base_topic: str, broker: Any) -> None:
    start_bridge()
    send(probe, base_topic, "truck-12", {"type": "video", "duration": 5})
    late = Probe(broker.port)
    try:
        late.subscribe(f"{base_topic}/truck-12/capture/state")
        msg = late.wait_for(lambda m: m.topic.endswith("capture/state"))[0]
        assert msg.retain
        assert msg.json()["request"]["FDuration"] == 5
        assert msg.json()["request"]["FCount"] == 0
    finally:
        late.close()


@pytest.mark.parametrize(
    ("device", "status", "error", "code"),
    [
        ("dev-busy", "busy", "camera_busy", 200),
        ("dev-device_error", "error", "device_error", 200),
        ("dev-exception", "error", "cloud_exception", 105),
        ("dev-unknown", "error", "no_such_device", 106),
        ("dev-send_failed", "error", "send_failed", 108),
        ("dev-offline", "error", "device_offline", 111),
        ("dev-not_supported", "error", "not_supported", 131),
        ("dev-timeout", "error", "device_timeout", 138),
        ("dev-bad_request", "error", "bad_request", 102),
    ],
)
def test_cloud_result_codes(
    start_bridge: StartBridge, probe: Probe, base_topic: str, device: str, status: str, error: str, code: int
) -> None:
    start_bridge()
    state = send(probe, base_topic, device, {"request_id": device})
    assert (state["status"], state["error"], state["code"]) == (status, error, code)
    assert state["request_id"] == device
    assert state["message"]


def test_other_result_is_cloud_error(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    start_bridge()
    cloud.fault = Fault.UNKNOWN_RESULT
    state = send(probe, base_topic, "truck-12", {})
    assert (state["status"], state["error"], state["code"]) == ("error", "cloud_error", 999)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1,2]", b'{"count": 0}', b'{"colour": "red"}', b'{"type": "panorama"}',
     b'{"count": 2, "FCount": 3}', b'{"count": 2, "count": 3}', b"\xff\xfe", b'{"count": 1000000}'],
)
def test_invalid_payload_never_reaches_cloud(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, payload: bytes
) -> None:
    start_bridge()
    before = len(cloud.instructions_for(GUIDS[Behaviour.OK]))
    state = send(probe, base_topic, "truck-12", payload)
    assert state["status"] == "error"
    assert state["error"] == "invalid_payload"
    assert state["code"] is None
    assert state["message"]
    # A later valid command proves the bridge is alive and the bad one was never sent.
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    assert len(cloud.instructions_for(GUIDS[Behaviour.OK])) == before + 1


def test_unknown_device_and_guid_topic(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    start_bridge()
    state = send(probe, base_topic, "no-such-truck", {})
    assert (state["error"], state["code"], state["asset_guid"]) == ("unknown_device", None, None)
    guid = GUIDS[Behaviour.OK]
    state = send(probe, base_topic, guid, {})
    assert state["status"] == "ok"
    assert state["asset_guid"] == guid


def test_guid_topic_ids_can_be_turned_off(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge({"bridge": {"guid_topic_ids": False}})
    assert send(probe, base_topic, GUIDS[Behaviour.OK], {})["error"] == "unknown_device"


def test_retained_command_is_never_executed(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    guid = str(uuid.uuid4())
    cloud.default_behaviour = "ok"
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "stale"}, retain=True)
    bridge = start_bridge()
    # A fresh command on another device is answered; by then the retained one was delivered and dropped.
    assert send(probe, base_topic, "truck-12", {"request_id": "fresh"})["status"] == "ok"
    bridge.wait_log("retained command")
    assert cloud.instructions_for(guid) == []
    assert probe.on_topic(f"{base_topic}/{guid}/capture/state") == []
    probe.publish(f"{base_topic}/{guid}/capture/set", b"", retain=True)  # clear it


def test_last_will_when_killed(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    bridge = start_bridge({"mqtt": {"keepalive": 5}})
    bridge.kill()
    msg = probe.wait_for(lambda m: m.topic == f"{base_topic}/bridge/state" and m.payload == b'{"state":"offline"}',
                         timeout=15)[0]
    assert msg.json() == {"state": "offline"}


def test_sigterm_is_clean(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    bridge = start_bridge()
    assert bridge.stop() == 0
    msgs = probe.wait_for(lambda m: m.topic == f"{base_topic}/bridge/state" and b"offline" in m.payload)
    assert msgs[-1].json() == {"state": "offline"}
    assert "Traceback" not in bridge.log_text()


def test_token_expiry_relogs_once(start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud) -> None:
    start_bridge()
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    logins = cloud.login_count
    cloud.expire_tokens()
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"
    assert cloud.login_count == logins + 1


def test_token_invalid_after_fresh_login(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge()
    state = send(probe, base_topic, "dev-token_error", {})
    assert (state["error"], state["code"]) == ("token_invalid", 104)


def test_fixed_token_rejected(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge({"cloud": {"username": None, "password": None, "token": "not-a-real-token"}})
    state = send(probe, base_topic, "truck-12", {})
    assert (state["error"], state["code"]) == ("token_invalid", 104)


def test_login_failed(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge({"cloud": {"password": "wrong-password"}})
    state = send(probe, base_topic, "truck-12", {})
    assert (state["status"], state["error"], state["code"]) == ("error", "login_failed", 103)


def test_cloud_unreachable(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    from tests.support.broker import free_port

    start_bridge({"cloud": {"base_url": f"http://127.0.0.1:{free_port()}/OpenApi"}})
    state = send(probe, base_topic, "truck-12", {})
    assert (state["error"], state["code"]) == ("cloud_unreachable", None)
    assert "tries" in state["message"]


def test_http_error_is_unreachable(start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud) -> None:
    start_bridge({"cloud": {"retry_attempts": 1}})
    cloud.fault = Fault.HTTP_500
    state = send(probe, base_topic, "truck-12", {})
    assert state["error"] == "cloud_unreachable"
    assert "500" in state["message"]


@pytest.mark.parametrize("fault", [Fault.NOT_JSON, Fault.MISSING_FIELDS, Fault.BAD_RESPONSE])
def test_bad_cloud_reply(start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud,
                         fault: Fault) -> None:
    start_bridge()
    cloud.fault = fault
    state = send(probe, base_topic, "truck-12", {})
    assert state["error"] == "bad_cloud_reply"
    cloud.fault = Fault.NONE
    assert send(probe, base_topic, "truck-12", {})["status"] == "ok"


def test_overloaded(start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud) -> None:
    start_bridge({"bridge": {"max_in_flight": 1, "max_backlog": 1}})
    cloud.latency = 0.5
    topic = f"{base_topic}/+/capture/state"
    probe.subscribe(topic)
    for device in ("truck-12", "dev-ok", "dev-busy", "dev-offline"):
        probe.publish(f"{base_topic}/{device}/capture/set", {"request_id": device})
    finals = probe.wait_for(lambda m: m.topic.startswith(base_topic) and m.topic.endswith("capture/state")
                            and m.json()["status"] != "pending", count=4, timeout=15)
    errors = sorted(str(m.json()["error"]) for m in finals)
    assert errors.count("overloaded") == 2
    assert len({m.topic for m in finals}) == 4


def test_response_topic_and_correlation(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge()
    reply_to = f"replies/{base_topic}/abc"  # not under the base topic: the bridge owns that tree
    probe.subscribe(reply_to)
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "rr"}, response_topic=reply_to,
                  correlation=b"\x01corr")
    msg = probe.wait_for(lambda m: m.topic == reply_to)[0]
    assert msg.json()["status"] == "ok"
    assert msg.json()["request_id"] == "rr"
    assert msg.properties.CorrelationData == b"\x01corr"
    assert not msg.retain


def test_mqtt_311(start_bridge: StartBridge, probe: Probe, base_topic: str) -> None:
    start_bridge({"mqtt": {"protocol": "3.1.1"}})
    assert send(probe, base_topic, "truck-12", {"type": 3, "count": 2, "duration": 4})["status"] == "ok"


def test_secrets_never_leak(start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud) -> None:
    probe.subscribe(f"{base_topic}/#")
    bridge = start_bridge({"logging": {"level": "DEBUG"}})
    send(probe, base_topic, "truck-12", {})
    cloud.expire_tokens()
    send(probe, base_topic, "truck-12", {})
    send(probe, base_topic, "dev-offline", {})
    send(probe, base_topic, "truck-12", b"junk")
    bridge.stop()
    tokens = cloud.issued_tokens
    assert tokens, "the mock should have issued tokens"
    secrets = [DEMO_PASSWORD, hashlib.md5(DEMO_PASSWORD.encode()).hexdigest(), *tokens]
    log = bridge.log_text()
    traffic = b"".join(m.payload for m in probe.messages).decode(errors="replace")
    for secret in secrets:
        assert secret not in log
        assert secret not in traffic


def test_config_error_exits_2_with_one_line(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  colour: red\ncloud:\n  token: x\n")
    result = bridge_cli("run", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "mqtt.colour" in lines[0]


def test_check_config_masks_secrets(tmp_path: Any) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mqtt:\n  password: mqtt-secret-1\ncloud:\n  username: u\n  password: cloud-secret-2\n"
                   "  token: tok-secret-3\n")
    result = bridge_cli("check-config", "--config", str(cfg))
    assert result.returncode == 0
    for secret in ("mqtt-secret-1", "cloud-secret-2", "tok-secret-3",
                   hashlib.md5(b"cloud-secret-2").hexdigest()):
        assert secret not in result.stdout + result.stderr
    shown = json.loads(result.stdout)
    assert shown["cloud"]["password"] == "**********"
    assert shown["cloud"]["username"] == "u"


def _capture_cli(tmp_path: Any, cloud: MockCloud, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"cloud": {"base_url": cloud.url, "username": "demo", "password": DEMO_PASSWORD},
                               "devices": {"truck-12": GUIDS[Behaviour.OK], "off": GUIDS[Behaviour.OFFLINE]}}))
    return bridge_cli("capture", *args, "--config", str(cfg))


def test_capture_cli_ok(tmp_path: Any, cloud: MockCloud) -> None:
    result = _capture_cli(tmp_path, cloud, "truck-12", "--type", "video", "--duration", "7")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["status"] == "ok"
    assert state["request"]["FDuration"] == 7


def test_capture_cli_uses_the_config_defaults_of_the_device(tmp_path: Any, cloud: MockCloud) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"cloud": {"base_url": cloud.url, "username": "demo", "password": DEMO_PASSWORD},
                               "devices": {"truck-12": {"guid": GUIDS[Behaviour.OK],
                                                        "defaults": {"resolution": "1080p", "count": 2}}}}))
    result = bridge_cli("capture", "truck-12", "--count", "3", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)["request"]
    assert (request["FResolution"], request["FCount"]) == (3, 3)  # the default, and the option over it


def test_capture_cli_uses_the_settings_users_chose(tmp_path: Any, cloud: MockCloud) -> None:
    # Settings a running bridge keeps (chosen through the GUID's topic id, any case) fill what the
    # command leaves out, over the config's defaults; an option still wins.
    journal = tmp_path / "journal.sqlite"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"cloud": {"base_url": cloud.url, "username": "demo", "password": DEMO_PASSWORD},
                               "bridge": {"journal_path": str(journal)},
                               "devices": {"truck-12": {"guid": GUIDS[Behaviour.OK], "defaults": {"count": 2}}}}))
    db = SettingsDb(tmp_path / "journal.settings.sqlite")
    db.put(GUIDS[Behaviour.OK].lower(), {"resolution": "1080p", "interval": 4}, "truck-12")
    db.commit()
    try:
        result = bridge_cli("capture", "truck-12", "--interval", "1", "--config", str(cfg))
    finally:
        db.close()
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)["request"]
    assert (request["FResolution"], request["FCount"], request["FInterval"]) == (3, 2, 1)


def test_capture_cli_error_exit(tmp_path: Any, cloud: MockCloud) -> None:
    result = _capture_cli(tmp_path, cloud, "off")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "device_offline"
    result = _capture_cli(tmp_path, cloud, "truck-12", "--count", "0")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "invalid_payload"


def test_capture_cli_payload_option(tmp_path: Any, cloud: MockCloud) -> None:
    result = _capture_cli(tmp_path, cloud, "truck-12", "--payload", '{"FType": 2, "FDuration": 4}', "--duration", "6")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["request"]["FDuration"] == 6
    result = _capture_cli(tmp_path, cloud, "truck-12", "--payload", "not json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "invalid_payload"


def test_live_retained_command_is_not_executed(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    """Published with retain=true while the bridge runs: still never executed (MQTT 5 retain-as-published)."""
    start_bridge()
    guid = str(uuid.uuid4())
    cloud.default_behaviour = "ok"
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "live-retained"}, retain=True)
    # A later, normal command on the same device is answered; the retained one before it was dropped.
    assert send(probe, base_topic, guid, {"request_id": "normal"})["request_id"] == "normal"
    assert [b["FAssetGUID"] for b in cloud.instructions_for(guid)] == [guid]
    probe.publish(f"{base_topic}/{guid}/capture/set", b"", retain=True)
