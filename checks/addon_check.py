"""`make addon-check`: build the Home Assistant add-on's image with Podman and run it as the Supervisor would.

The image is built from the repository root (the add-on folder, config.yaml beside its Dockerfile)
with the build arguments the Supervisor passes (BUILD_ARCH, BUILD_VERSION), then run with a
root-owned `/data` holding options.json, the add-on's config folder on `/config`, a token in
SUPERVISOR_TOKEN and a stand-in Supervisor (aiohttp.web) advertising a private Mosquitto as its
MQTT service; the mock cloud answers the capture. One PASS/FAIL line per check, exit 1 on any FAIL.

Podman, never dockerd. Where the pinned base image cannot be pulled (no registry reachable), the
image is built on the stand-in that `make image-check` builds with mmdebstrap (Debian bookworm's
python3 3.11), and the check says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bridge.sim.behaviours import DEMO_PASSWORD, DEMO_USER
from checks.engines import STANDIN_PYTHON, Engine, apt_install, base_image, podman_limits, python_standin
from checks.report import Report
from tests.support.broker import Broker, free_port
from tests.support.cloud_proc import MockCloudProcess
from tests.support.commands import is_online, send
from tests.support.http import http_get
from tests.support.probe import Probe
from tests.support.supervisor import FakeSupervisor

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/capture-bridge-addon-check:latest"
# The mock cloud's demo device that answers ok (bridge/sim/behaviours.py).
OK_GUID = "a64b2e58-9305-4a01-9c51-092205123945"
TOKEN = f"check-{uuid.uuid4().hex}"
BROKER_PASSWORD = f"mqtt-{uuid.uuid4().hex[:12]}"
CLOUD_PASSWORD = DEMO_PASSWORD


def manifest() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def pinned_base() -> str:
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            return line.split("=", 1)[1]
    raise SystemExit("Dockerfile has no `ARG PYTHON_IMAGE=...` line")


def podman() -> Engine:
    if not shutil.which("podman"):
        apt_install(["podman", "runc", "uidmap", "slirp4netns"], "Podman is missing")
    engine = Engine("podman", [], "Podman")
    engine.version = f"Podman {engine('version', '--format', '{{.Client.Version}}').stdout.strip()}"
    return engine


def build(report: Report, engine: Engine, base: str, version: str) -> bool:
    started = time.monotonic()
    done = engine("build", "-f", "Dockerfile", "--build-arg", f"PYTHON_IMAGE={base}",
                  "--build-arg", "BUILD_ARCH=amd64", "--build-arg", f"BUILD_VERSION={version}",
                  "-t", IMAGE, ".", check=False, timeout=1800)
    ok = report.check("the add-on image builds from the repository root (the add-on folder)", done.returncode == 0,
                      f"{time.monotonic() - started:.0f} s, FROM {base}")
    if not ok:
        print((done.stdout + done.stderr)[-3000:])
    return ok


def check_labels(report: Report, engine: Engine, version: str) -> None:
    config = engine.inspect(IMAGE, "image").get("Config") or {}
    labels = config.get("Labels") or {}
    hass = {k: v for k, v in labels.items() if k.startswith("io.hass.")}
    report.check("image: io.hass.* labels (type addon, arch, version)",
                 hass.get("io.hass.type") == "addon" and hass.get("io.hass.arch") == "amd64"
                 and hass.get("io.hass.version") == version, json.dumps(hass))
    report.check("image: runs as root (the Supervisor's /data is root-owned)", config.get("User") in (None, "", "root"),
                 repr(config.get("User")))


class Addon:
    """The add-on's folders on the host and how to start its container, as the Supervisor would."""

    def __init__(self, engine: Engine, workdir: Path, broker: Broker, cloud: MockCloudProcess) -> None:
        self.engine = engine
        self.data = workdir / "data"
        self.config = workdir / "config"
        self.base = f"c{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()
        self.broker = broker
        self.cloud = cloud
        # Root-owned, like the Supervisor's /data (this check runs as root; the owner is asserted).
        self.data.mkdir(mode=0o755)
        self.config.mkdir(mode=0o755)
        (self.config / "devices.yaml").write_text("van-7: 5f1c0a6e-2b7d-4c1e-9a0f-3d2e1b4c5a69\n", encoding="utf-8")
        options = {**manifest()["options"], "cloud_url": cloud.url, "username": DEMO_USER, "password": CLOUD_PASSWORD,
                   "devices": [{"id": "truck-12", "guid": OK_GUID, "name": "Truck 12"}],
                   "devices_file": "devices.yaml", "base_topic": self.base}
        (self.data / "options.json").write_text(json.dumps(options), encoding="utf-8")
        (self.data / "options.json").chmod(0o600)

    def run_args(self, supervisor: FakeSupervisor, name: str, how: str) -> list[str]:
        """`podman run --rm` (how) or `-d` for this add-on, up to the image name."""
        # Host network: the container reaches the stand-in Supervisor, the broker and the mock cloud on
        # 127.0.0.1; the metrics port moves off 9108 so nothing else on the machine is disturbed.
        return ["run", how, "--name", name, "--network", "host", "-v", f"{self.data}:/data",
                "-v", f"{self.config}:/config:ro", "-e", f"SUPERVISOR_TOKEN={TOKEN}",
                "-e", f"CAPTURE_BRIDGE_ADDON_SUPERVISOR={supervisor.url}",
                "-e", f"CAPTURE_BRIDGE_METRICS__PORT={self.metrics_port}",
                "-e", f"CAPTURE_BRIDGE_MQTT__CLIENT_ID=addon-check-{self.base}"]

    def healthz(self) -> int:
        try:
            return http_get(f"http://127.0.0.1:{self.metrics_port}/healthz")[0]
        except OSError:  # not listening (yet)
            return 0


def one_shot(addon: Addon, supervisor: FakeSupervisor, *args: str) -> subprocess.CompletedProcess[str]:
    name = f"addon-check-{uuid.uuid4().hex[:6]}"
    return addon.engine(*addon.run_args(supervisor, name, "--rm"), IMAGE, *args, check=False, timeout=120)


def check_effective_config(report: Report, addon: Addon, supervisor: FakeSupervisor) -> None:
    done = one_shot(addon, supervisor, "--check")
    try:
        shown = json.loads(done.stdout)
    except ValueError:
        shown = {}
    secrets = (CLOUD_PASSWORD, BROKER_PASSWORD, TOKEN)
    report.check("--check prints the effective config, secrets masked",
                 done.returncode == 0 and shown.get("mqtt", {}).get("url") == f"mqtt://127.0.0.1:{addon.broker.port}"
                 and set(shown.get("devices", {})) == {"truck-12", "van-7"}
                 and not any(s in done.stdout + done.stderr for s in secrets),
                 f"exit {done.returncode}; mqtt.url {shown.get('mqtt', {}).get('url')}, "
                 f"devices {sorted(shown.get('devices', {}))}; {done.stderr.strip()[-300:]}")


def check_no_broker(report: Report, addon: Addon) -> None:
    with FakeSupervisor(TOKEN, None) as empty:
        done = one_shot(addon, empty)
    lines = done.stderr.strip().splitlines()
    report.check("no MQTT service: one line naming the broker add-on, exit 2",
                 done.returncode == 2 and len(lines) == 1 and "Mosquitto broker add-on" in lines[0],
                 f"exit {done.returncode}: {done.stderr.strip()[-300:]}")


def check_capture(report: Report, addon: Addon, supervisor: FakeSupervisor) -> None:
    """The add-on as a service: online, a capture answered ok, /healthz, a clean stop."""
    name = f"addon-check-{uuid.uuid4().hex[:6]}"
    probe = Probe(addon.broker.port)
    try:
        probe.subscribe(f"{addon.base}/bridge/state")
        addon.engine(*addon.run_args(supervisor, name, "-d"), IMAGE)
        probe.wait_for(is_online(addon.base), timeout=60)
        state = send(probe, addon.base, "truck-12", {"type": "photo", "request_id": "addon-check"}, timeout=30)
        report.check("the add-on answers a capture (options + the Supervisor's broker -> ok)",
                     state["status"] == "ok" and state["asset_guid"] == OK_GUID,
                     f"status {state['status']}, file {state.get('file_id')}")
        journal = addon.data / "journal.sqlite"
        owner = addon.data.stat().st_uid
        report.check("the journal lives in the root-owned /data", journal.exists() and owner == 0,
                     f"/data owner uid {owner}, {sorted(p.name for p in addon.data.iterdir())}")
        report.check("/healthz answers 200 on the watchdog's port", addon.healthz() == 200, str(addon.healthz()))
        started = time.monotonic()
        addon.engine("stop", "-t", "45", name, timeout=120)
        code = addon.engine.inspect(name).get("State", {}).get("ExitCode")
        report.check("SIGTERM stops it cleanly (exit 0)", code == 0,
                     f"exit {code} after {time.monotonic() - started:.1f} s")
        logs = addon.engine("logs", name, check=False)
        text = logs.stdout + logs.stderr
        report.check("the log shows the masked config and no secret",
                     "effective config (secrets masked)" in text
                     and not any(s in text for s in (CLOUD_PASSWORD, BROKER_PASSWORD, TOKEN)),
                     f"{len(text.splitlines())} log lines")
        report.check("the stand-in Supervisor was asked with the add-on's token",
                     ("/services/mqtt", f"Bearer {TOKEN}") in supervisor.requests, str(len(supervisor.requests)))
    finally:
        probe.close()
        addon.engine("rm", "-f", "-t", "0", name, check=False)


@contextmanager
def services(workdir: Path) -> Iterator[tuple[Broker, MockCloudProcess]]:
    broker = Broker(workdir / "mosquitto").start()
    cloud = MockCloudProcess(workdir, "--host", "127.0.0.1")
    try:
        yield broker, cloud
    finally:
        cloud.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-standins", action="store_true", help="rebuild the stand-in base image")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("addon-check: run as root (rootful Podman, and a root-owned /data as the Supervisor has)")
    report = Report()
    engine = podman()
    print(f"addon-check with {engine.version}", flush=True)
    version = str(manifest()["version"])
    base = base_image(engine, pinned_base(), STANDIN_PYTHON, python_standin, args.rebuild_standins)
    podman_limits(engine, base)
    if not build(report, engine, base, version):
        return 1
    check_labels(report, engine, version)
    with tempfile.TemporaryDirectory(prefix="addon-check-") as tmp, services(Path(tmp)) as (broker, cloud):
        addon = Addon(engine, Path(tmp), broker, cloud)
        service = {"host": "127.0.0.1", "port": broker.port, "ssl": False, "protocol": "3.1.1",
                   "username": "addons", "password": BROKER_PASSWORD, "addon": "core_mosquitto"}
        steps: list[tuple[str, Callable[[FakeSupervisor], None]]] = [
            ("--check", lambda sup: check_effective_config(report, addon, sup)),
            ("capture", lambda sup: check_capture(report, addon, sup)),
        ]
        with FakeSupervisor(TOKEN, service) as supervisor:
            for step_name, step in steps:
                try:
                    step(supervisor)
                except (RuntimeError, TimeoutError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                    report.check(step_name, False, f"{type(exc).__name__}: {str(exc)[-1500:]}")
        check_no_broker(report, addon)
    total = report.passes + len(report.failures)
    print(f"addon-check: {report.passes}/{total} passed" + (f"; FAILED: {', '.join(report.failures)}"
                                                            if report.failures else ""), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
