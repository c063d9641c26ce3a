"""Shared fixtures: a private Mosquitto, the real mock cloud over HTTP, MQTT probes, bridge processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.mockcloud import DEMO_PASSWORD, DEMO_USER, Behaviour, Fault, MockCloud
from tests.support.bridge_proc import BridgeProcess, deep_merge
from tests.support.broker import Broker, DockerBroker, docker_available
from tests.support.probe import Probe, Received

# GUIDs the mock cloud knows, one per behaviour.
GUIDS = {behaviour: str(uuid.UUID(int=i + 1, version=4)) for i, behaviour in enumerate(Behaviour)}


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One private Mosquitto for the whole run (tests keep apart by topic)."""
    b: Any = DockerBroker().start() if docker_available() else Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def cloud_server() -> Iterator[MockCloud]:
    """The mock cloud, started once."""
    with MockCloud(devices={guid: b for b, guid in GUIDS.items()}, timeout_delay=0.2) as cloud:
        yield cloud


@pytest.fixture
def cloud(cloud_server: MockCloud) -> Iterator[MockCloud]:
    """The mock cloud, back to normal behaviour after each test."""
    yield cloud_server
    cloud_server.fault = Fault.NONE
    cloud_server.fault_count = None
    cloud_server.fault_login = False
    cloud_server.device_faults = {}
    cloud_server.retry_after = 1.0
    cloud_server.slow_delay = 5.0
    cloud_server.latency = 0.0
    cloud_server.devices = {guid: b for b, guid in GUIDS.items()}
    cloud_server.default_behaviour = Behaviour.UNKNOWN
    cloud_server.users = {DEMO_USER: DEMO_PASSWORD}
    cloud_server.account_expired = set()


@pytest.fixture
def probe(broker: Broker) -> Iterator[Probe]:
    """A test MQTT client on the private broker."""
    p = Probe(broker.port)
    yield p
    p.close()


@pytest.fixture
def base_topic() -> str:
    """A base topic of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}"


def bridge_config(broker: Broker, cloud: MockCloud, base_topic: str, workdir: Path) -> dict[str, Any]:
    """A config for the bridge under test: private broker, mock cloud, own topics and journal."""
    return {
        "mqtt": {
            "url": broker.url,
            "client_id": f"bridge-{base_topic}",
            "base_topic": base_topic,
            "reconnect_min": 0.2,
            "reconnect_max": 1.0,
        },
        "cloud": {
            "base_url": cloud.url,
            "username": DEMO_USER,
            "password": DEMO_PASSWORD,
            "read_timeout": 3.0,
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.2,
        },
        "devices": {
            "truck-12": GUIDS[Behaviour.OK],
            **{f"dev-{b.value}": GUIDS[b] for b in Behaviour},
        },
        "bridge": {"journal_path": str(workdir / "journal.sqlite"), "shutdown_timeout": 5.0},
        "homeassistant": {"enabled": False},
    }


@pytest.fixture
def start_bridge(
    broker: Broker, cloud: MockCloud, base_topic: str, tmp_path: Path, probe: Probe
) -> Iterator[Callable[..., BridgeProcess]]:
    """Start the real bridge process with config overrides; waits for `online`; stops it after the test."""
    started: list[BridgeProcess] = []

    def start(overrides: dict[str, Any] | None = None, *, wait_online: bool = True, env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> BridgeProcess:
        config = deep_merge(bridge_config(broker, cloud, base_topic, tmp_path), overrides or {})
        proc = BridgeProcess(tmp_path / f"bridge{len(started)}", config, env).start(*args)
        started.append(proc)
        if wait_online:
            base = config["mqtt"]["base_topic"]
            probe.subscribe(f"{base}/bridge/state")
            topic = f"{base}/bridge/state"

            def live_online(m: Received) -> bool:
                return m.topic == topic and m.payload == b'{"state":"online"}' and not m.retain

            n = len([m for m in probe.messages if live_online(m)])
            probe.wait_for(live_online, count=n + 1, timeout=20)
        return proc

    yield start
    for proc in started:
        try:
            proc.stop(timeout=15)
        except Exception:
            proc.kill()
