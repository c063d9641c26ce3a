"""Shared fixtures: a private Mosquitto, the real mock cloud over HTTP, MQTT probes, bridge processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.sim.behaviours import DEMO_PASSWORD, DEMO_USER, Behaviour, Fault
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import BridgeProcess, deep_merge
from tests.support.broker import Broker, mosquitto_binary
from tests.support.commands import is_online
from tests.support.configs import GUIDS, bridge_config
from tests.support.probe import Probe


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One private Mosquitto for the whole run (tests keep apart by topic).

    A container from testcontainers with CAPTURE_BRIDGE_TEST_DOCKER=1 where a Docker API answers,
    else the local mosquitto. Without either, every test that needs it is skipped with one
    reason saying what to install, instead of erroring one by one.
    """
    b: Any
    if wants_container_broker():
        from tests.support.container_broker import DockerBroker

        b = DockerBroker(tmp_path_factory.mktemp("mosquitto")).start()
    else:
        try:
            mosquitto_binary()
        except RuntimeError as exc:
            pytest.skip(str(exc))
        b = Broker(tmp_path_factory.mktemp("mosquitto")).start()
    yield b
    b.stop()


def wants_container_broker() -> bool:
    """CAPTURE_BRIDGE_TEST_DOCKER=1 and a Docker API answers (testcontainers is imported only then)."""
    if os.environ.get("CAPTURE_BRIDGE_TEST_DOCKER") != "1":
        return False
    from tests.support.container_broker import docker_available

    return docker_available()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Asked for a container broker where none can run: one line and stop, not the local broker instead."""
    if os.environ.get("CAPTURE_BRIDGE_TEST_DOCKER") == "1" and not wants_container_broker():
        pytest.exit(f"CAPTURE_BRIDGE_TEST_DOCKER=1 but no Docker API answers at "
                    f"{os.environ.get('DOCKER_HOST', 'the default socket')}: start Docker (or `podman system "
                    "service` and point DOCKER_HOST at its socket), or unset CAPTURE_BRIDGE_TEST_DOCKER",
                    returncode=4)


def pytest_report_header() -> str:
    """Which broker the suite shares: a line in the run's header, so a log says what ran."""
    if not wants_container_broker():
        return "broker: local mosquitto"
    from tests.support.container_broker import IMAGE_ENV

    return (f"broker: testcontainers, image {os.environ.get(IMAGE_ENV, 'eclipse-mosquitto:2')}, "
            f"Docker API at {os.environ.get('DOCKER_HOST', 'the default socket')}")


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
            live_online = is_online(base)
            n = len([m for m in probe.messages if live_online(m)])
            probe.wait_for(live_online, count=n + 1, timeout=20)
        return proc

    yield start
    for proc in started:
        try:
            proc.stop(timeout=15)
        except Exception:
            proc.kill()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The broker matrix's third-party brokers get one rerun of a test that timed out.

    NATS, RabbitMQ, Aedes and amqtt now and then stall for tens of seconds under CI load (a SUBACK
    or a retained copy that comes late, a restart that loses what it held); Mosquitto, the broker
    the bridge is built against, gets none. A test that times out twice still fails.
    """
    for item in items:
        callspec = getattr(item, "callspec", None)
        broker = callspec.params.get("matrix_broker") if callspec is not None else None
        if isinstance(broker, str) and not broker.startswith("mosquitto"):
            item.add_marker(pytest.mark.flaky(reruns=1, only_rerun=["TimeoutError"]))
