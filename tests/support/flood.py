"""A command flood through a real Mosquitto, the real bridge process and the mock cloud (its own process).

`run_flood` publishes `commands` capture commands (QoS 1, spread over `guids` GUID topic ids)
and `onlines` `online` messages on Home Assistant's status topic while `devices` cameras are
configured (each announcement is one discovery message per camera, or 14 with per-entity discovery),
then checks:

- every command got its final state: live, or after one restart of the bridge (the
  journal and the broker's session hold what was not answered yet);
- discovery was announced far fewer times than Home Assistant asked (coalesced);
- the bridge's RSS once the flood is over.

`measure_birth` counts what one Home Assistant birth (`online`) makes the bridge send, per discovery mode.

Used by `make flood` (bench/flood.py, 100,000 commands) and, shorter, by the test suite.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.bridge_proc import BridgeProcess
from tests.support.broker import free_port
from tests.support.cloud_proc import MockCloudProcess

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FloodResult:
    """What a flood run saw."""

    commands: int
    onlines: int
    devices: int
    answered_live: int = 0
    answered_after_restart: int = 0
    missing: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    announcements: int = 0
    messages_per_announcement: int = 0
    discovery_messages: int = 0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    publish_seconds: float = 0.0
    answer_seconds: float = 0.0
    restarted: bool = False
    log_tail: str = ""
    metrics_when_stuck: str = ""

    def summary(self) -> dict[str, Any]:
        """The result as plain data (for printing)."""
        data = dict(self.__dict__)
        data["missing"] = len(self.missing)
        data.pop("log_tail")
        return data


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = float(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


class Collector:
    """Subscribes to the state topics and the discovery prefix; keeps only what the checks need."""

    def __init__(self, port: int, base: str, prefix: str) -> None:
        self.base = base
        self.prefix = prefix
        self.answered: dict[str, str] = {}  # request_id -> status of its first final state
        self._awaited: set[str] = set()  # what wait_answered waits for and has not seen yet
        self.discovery = 0
        self.discovery_bytes = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-sub-{uuid.uuid4().hex[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{base}/+/capture/state", 1), (f"{prefix}/#", 0)])
        if not subscribed.wait(10):
            raise TimeoutError("flood subscriber got no SUBACK")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.startswith(self.prefix + "/"):
            if not msg.retain and msg.payload and msg.topic.endswith("/config"):  # not HA's own `online`
                with self._lock:
                    self.discovery += 1
                    self.discovery_bytes += len(msg.topic) + len(msg.payload)
            return
        payload = bytes(msg.payload)
        if not payload or b'"status":"pending"' in payload:
            return
        start = payload.find(b'"request_id":"')
        if start < 0:
            return
        start += len(b'"request_id":"')
        rid = payload[start : payload.find(b'"', start)].decode()
        status_at = payload.find(b'"status":"') + len(b'"status":"')
        status = payload[status_at : payload.find(b'"', status_at)].decode()
        with self._changed:
            self.answered.setdefault(rid, status)
            if rid in self._awaited:
                self._awaited.discard(rid)
                if not self._awaited:
                    self._changed.notify_all()

    def wait_answered(self, wanted: set[str], timeout: float) -> set[str]:
        """Wait until every request_id in `wanted` is answered; return those still missing."""
        deadline = time.monotonic() + timeout
        with self._changed:
            # Kept up to date by _on_message: no rescan of `wanted` per message (quadratic at 100,000).
            self._awaited = {rid for rid in wanted if rid not in self.answered}
            while self._awaited:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 1.0))
            missing, self._awaited = self._awaited, set()
            return missing

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def flood_config(broker_port: int, cloud_url: str, workdir: Path, devices: int,
                 discovery: str = "device") -> dict[str, Any]:
    """Defaults everywhere except what makes the run private: topics, client id, journal, HA prefix (and mode)."""
    tag = uuid.uuid4().hex[:8]
    return {
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "client_id": f"flood-{tag}", "base_topic": f"flood-{tag}",
                 "reconnect_min": 0.2, "reconnect_max": 1.0},
        "cloud": {"base_url": cloud_url, "username": "demo", "password": "demo-password"},
        "devices": {f"cam-{i:03d}": str(uuid.uuid4()) for i in range(devices)},
        "bridge": {"journal_path": str(workdir / "journal.sqlite"), "shutdown_timeout": 10.0},
        "homeassistant": {"enabled": True, "prefix": f"ha-{tag}", "status_topic": f"ha-{tag}/status",
                          "discovery": discovery},
        "metrics": {"port": free_port()},
        "logging": {"level": "WARNING"},
    }


def run_flood(broker_port: int, workdir: Path, *, commands: int, onlines: int, devices: int, guids: int = 2000,
              answer_timeout: float = 120.0, bridge: dict[str, Any] | None = None,
              settle: float = 20.0) -> FloodResult:
    """Flood the bridge; see the module docstring for what is checked (the caller asserts)."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = FloodResult(commands, onlines, devices)
    cloud = MockCloudProcess(workdir, "--any-device")
    config = flood_config(broker_port, cloud.url, workdir, devices)
    config["bridge"].update(bridge or {})
    base, ha = config["mqtt"]["base_topic"], config["homeassistant"]
    collector = Collector(broker_port, base, ha["prefix"])
    process = BridgeProcess(workdir / "bridge", config).start()
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-pub-{uuid.uuid4().hex[:8]}",
                            protocol=MQTTProtocolVersion.MQTTv5)
    try:
        publisher.connect("127.0.0.1", broker_port)
        publisher.loop_start()
        # One announcement at start: how many messages one is.
        deadline = time.monotonic() + 60
        while collector.discovery == 0 or _still_growing(collector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no discovery announcement at start:\n{process.log_text()[-2000:]}")
        result.messages_per_announcement = collector.discovery
        targets = [str(uuid.uuid4()) for _ in range(guids)]
        wanted: set[str] = set()
        every = max(1, commands // max(onlines, 1))
        started = time.monotonic()
        infos = []
        for i in range(commands):
            rid = f"f{i}"
            wanted.add(rid)
            infos.append(publisher.publish(f"{base}/{targets[i % guids]}/capture/set",
                                           f'{{"request_id":"{rid}"}}', qos=1))
            if onlines and i % every == 0 and i // every < onlines:
                publisher.publish(ha["status_topic"], b"online", qos=1)
            if len(infos) >= 1000:
                for info in infos:
                    info.wait_for_publish(60)
                infos.clear()
        for info in infos:
            info.wait_for_publish(60)
        result.publish_seconds = time.monotonic() - started
        missing = collector.wait_answered(wanted, answer_timeout)
        result.answer_seconds = time.monotonic() - started
        result.answered_live = len(wanted) - len(missing)
        if missing:
            result.metrics_when_stuck = _scrape(config["metrics"]["port"])
        assert process.proc is not None
        # Idle pooled cloud connections close after cloud.keepalive_timeout (15 s): sample until
        # then. What stays after that is what a leak would be.
        settled = time.monotonic() + settle
        while True:
            result.rss_after_mb, result.rss_peak_mb = rss_mb(process.proc.pid)
            if time.monotonic() > settled:
                break
            time.sleep(1)  # ok: sampling memory once a second for the settle period
        if missing:
            result.restarted = True
            process.stop(timeout=60)
            process = BridgeProcess(workdir / "bridge-again", config).start()
            missing = collector.wait_answered(missing, answer_timeout)
            result.answered_after_restart = len(wanted) - len(missing) - result.answered_live
        result.missing = sorted(missing)
        result.discovery_messages = collector.discovery
        per = max(result.messages_per_announcement, 1)
        result.announcements = round(collector.discovery / per)
        for status in collector.answered.values():
            result.statuses[status] = result.statuses.get(status, 0) + 1
        result.log_tail = process.log_text()[-3000:]
        return result
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        process.stop(timeout=60)
        collector.close()
        cloud.stop()


@dataclass
class Birth:
    """What one Home Assistant birth made the bridge send: discovery messages and their bytes (topic + payload)."""

    discovery: str
    devices: int
    messages: int
    bytes: int


def measure_birth(broker_port: int, workdir: Path, *, devices: int, discovery: str) -> Birth:
    """Start the bridge, let its first announcement pass, send one `online`, count what it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    cloud = MockCloudProcess(workdir, "--any-device")
    config = flood_config(broker_port, cloud.url, workdir, devices, discovery)
    ha = config["homeassistant"]
    collector = Collector(broker_port, config["mqtt"]["base_topic"], ha["prefix"])
    process = BridgeProcess(workdir / f"bridge-{discovery}", config).start()
    try:
        deadline = time.monotonic() + 60
        while collector.discovery == 0 or _still_growing(collector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no discovery announcement at start:\n{process.log_text()[-2000:]}")
        messages, size = collector.discovery, collector.discovery_bytes
        collector.client.publish(ha["status_topic"], b"online", qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 60
        while collector.discovery == messages or _still_growing(collector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no announcement after `online`:\n{process.log_text()[-2000:]}")
        return Birth(discovery, devices, collector.discovery - messages, collector.discovery_bytes - size)
    finally:
        process.stop(timeout=60)
        collector.close()
        cloud.stop()


def _scrape(port: int) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
    except OSError as exc:
        return f"no metrics: {exc}"
    return "\n".join(line for line in text.splitlines() if line.startswith("capture_bridge") and "bucket" not in line)


def _still_growing(collector: Collector) -> bool:
    before = collector.discovery
    time.sleep(0.5)  # ok: sampling a counter until it stops moving
    return collector.discovery != before
