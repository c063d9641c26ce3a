"""The add-on's entry point (`python -m bridge.addon`) as the Supervisor runs it, against real parts.

A stand-in Supervisor (aiohttp.web) advertises a real private Mosquitto as its MQTT service, the
mock cloud answers over HTTP, options.json sits in a /data of the test's own: options + service
-> a capture published -> an `ok` state. A missing broker or a bad option is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.behaviours import DEMO_PASSWORD, DEMO_USER, Behaviour
from bridge.sim.server import MockCloud
from tests.support import commands
from tests.support.broker import Broker, free_port
from tests.support.commands import is_online
from tests.support.configs import GUIDS, fresh_guids
from tests.support.probe import Probe
from tests.support.supervisor import FakeSupervisor

ROOT = Path(__file__).resolve().parents[2]
TOKEN = f"sup-{uuid.uuid4().hex}"


@pytest.fixture
def supervisor(broker: Broker) -> Iterator[FakeSupervisor]:
    service = {"host": "127.0.0.1", "port": broker.port, "ssl": False, "protocol": "3.1.1",
               "username": "addons", "password": "mqtt-secret", "addon": "core_mosquitto"}
    with FakeSupervisor(TOKEN, service) as sup:
        yield sup


def addon_env(tmp_path: Path, supervisor_url: str, base_topic: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTURE_BRIDGE_", "SUPERVISOR_"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "SUPERVISOR_TOKEN": TOKEN,
        "CAPTURE_BRIDGE_ADDON_DATA": str(tmp_path / "data"),
        "CAPTURE_BRIDGE_ADDON_CONFIG": str(tmp_path / "config"),
        "CAPTURE_BRIDGE_ADDON_SUPERVISOR": supervisor_url,
        # The add-on's fixed metrics port and client id would collide with other tests on this machine.
        "CAPTURE_BRIDGE_METRICS__PORT": str(free_port()),
        "CAPTURE_BRIDGE_METRICS__HOST": "127.0.0.1",
        "CAPTURE_BRIDGE_MQTT__CLIENT_ID": f"addon-{base_topic}",
        "CAPTURE_BRIDGE_HOMEASSISTANT__PREFIX": f"{base_topic}-ha",
        "CAPTURE_BRIDGE_HOMEASSISTANT__STATUS_TOPIC": f"{base_topic}-ha/status",
    })
    return env


def write_options(tmp_path: Path, cloud: MockCloud, base_topic: str, **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"cloud_url": cloud.url, "username": DEMO_USER, "password": DEMO_PASSWORD,
                               "devices": [{"id": "truck-12", "guid": GUIDS[Behaviour.OK], "name": "Truck 12"}],
                               "base_topic": base_topic, "guid_topic_ids": True, "log_level": "info", **extra}
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "data" / "options.json").write_text(json.dumps(options))
    return options


def run_addon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge.addon", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_options_and_the_supervisors_broker_answer_a_capture(
        tmp_path: Path, supervisor: FakeSupervisor, cloud: MockCloud, probe: Probe, base_topic: str) -> None:
    file_guid = fresh_guids(1)[0]
    cloud.devices[file_guid] = Behaviour.OK
    write_options(tmp_path, cloud, base_topic, devices_file="devices.yaml")
    (tmp_path / "config" / "devices.yaml").write_text(f"van-7: {file_guid}\n")
    probe.subscribe(f"{base_topic}/bridge/state")
    log = (tmp_path / "addon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bridge.addon"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=addon_env(tmp_path, supervisor.url, base_topic))
    try:
        probe.wait_for(is_online(base_topic), timeout=30)
        state = commands.send(probe, base_topic, "truck-12", {"type": "photo", "request_id": "addon-1"})
        assert (state["status"], state["asset_guid"], state["request_id"]) == ("ok", GUIDS[Behaviour.OK], "addon-1")
        from_file = commands.send(probe, base_topic, "van-7", {"type": "photo"})
        assert (from_file["status"], from_file["asset_guid"]) == ("ok", file_guid)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
    assert supervisor.requests == [("/services/mqtt", f"Bearer {TOKEN}")]
    assert (tmp_path / "data" / "journal.sqlite").exists()
    text = (tmp_path / "addon.log").read_text()
    assert "effective config (secrets masked)" in text
    for secret in (DEMO_PASSWORD, "mqtt-secret", TOKEN):
        assert secret not in text


def test_check_prints_the_effective_config_masked(
        tmp_path: Path, supervisor: FakeSupervisor, cloud: MockCloud, broker: Broker, base_topic: str) -> None:
    write_options(tmp_path, cloud, base_topic)
    done = run_addon(addon_env(tmp_path, supervisor.url, base_topic), "--check")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["mqtt"]["url"] == f"mqtt://127.0.0.1:{broker.port}"
    assert shown["mqtt"]["protocol"] == "auto"
    assert shown["cloud"]["base_url"] == cloud.url
    assert shown["devices"]["truck-12"]["guid"] == GUIDS[Behaviour.OK]
    assert shown["bridge"]["journal_path"] == str(tmp_path / "data" / "journal.sqlite")
    for secret in (DEMO_PASSWORD, "mqtt-secret", TOKEN):
        assert secret not in done.stdout + done.stderr


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_no_mqtt_service_is_one_line_naming_the_broker_addon(
        tmp_path: Path, cloud: MockCloud, base_topic: str) -> None:
    write_options(tmp_path, cloud, base_topic)
    with FakeSupervisor(TOKEN, None) as sup:
        line = one_line(run_addon(addon_env(tmp_path, sup.url, base_topic)))
    assert line.startswith("capture-bridge: config error: no MQTT broker:")
    assert "Service not enabled" in line
    assert "Mosquitto broker add-on" in line


def test_unreachable_supervisor_is_one_line(tmp_path: Path, cloud: MockCloud, base_topic: str) -> None:
    write_options(tmp_path, cloud, base_topic)
    line = one_line(run_addon(addon_env(tmp_path, f"http://127.0.0.1:{free_port()}", base_topic)))
    assert line.startswith("capture-bridge: config error: cannot reach the Supervisor at http://127.0.0.1:")
    assert "refused" in line.lower()


@pytest.mark.parametrize(("extra", "start"), [
    ({"cloud_url": "ftp://cloud.example"}, "cloud_url: must be an http:// or https:// URL"),
    ({"devices": [{"id": "truck-12", "guid": "not-a-guid"}]}, "devices (truck-12.guid): is not a GUID"),
    ({"password": ""}, "password: fill it in on the add-on's Configuration tab"),
])
def test_a_bad_option_is_one_line_naming_it(
        tmp_path: Path, supervisor: FakeSupervisor, cloud: MockCloud, base_topic: str,
        extra: dict[str, Any], start: str) -> None:
    write_options(tmp_path, cloud, base_topic, **extra)
    line = one_line(run_addon(addon_env(tmp_path, supervisor.url, base_topic)))
    assert line.startswith(f"capture-bridge: config error: {start}")
    assert DEMO_PASSWORD not in line


def test_outside_an_addon_is_one_line(tmp_path: Path, supervisor: FakeSupervisor, cloud: MockCloud,
                                      base_topic: str) -> None:
    write_options(tmp_path, cloud, base_topic)
    env = addon_env(tmp_path, supervisor.url, base_topic)
    del env["SUPERVISOR_TOKEN"]
    line = one_line(run_addon(env))
    assert line.startswith("capture-bridge: config error: SUPERVISOR_TOKEN is not set")
    assert supervisor.requests == []
