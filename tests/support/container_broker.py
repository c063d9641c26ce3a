"""The suite's shared Mosquitto from testcontainers, where a Docker API answers.

Asked for with CAPTURE_BRIDGE_TEST_DOCKER=1; Docker Engine or Podman's Docker-compatible service
(`podman system service`, with DOCKER_HOST pointing at its socket) both do. The image is
CAPTURE_BRIDGE_TEST_MOSQUITTO_IMAGE (default eclipse-mosquitto:2); where no registry is reachable,
`python -m checks.engines standin-mosquitto` builds a stand-in and prints its tag. Without a
registry, testcontainers' reaper image cannot be pulled either: TESTCONTAINERS_RYUK_DISABLED=true.

The container runs the same settings as the local broker (tests/support/broker.py), is published
on 127.0.0.1 only, on a port chosen here so that `restart()` keeps it, and counts as started when
it answers an MQTT CONNECT: the port alone is no sign (Docker's userland proxy accepts before the
broker listens), nor is its log (Debian's mosquitto does not flush stdout to a pipe).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from testcontainers.core.container import DockerContainer
from testcontainers.core.waiting_utils import WaitStrategy, WaitStrategyTarget

from tests.support.broker import free_port, mosquitto_settings

MQTT_PORT = 1883
IMAGE_ENV = "CAPTURE_BRIDGE_TEST_MOSQUITTO_IMAGE"
CONFIG = "/mosquitto/config/mosquitto.conf"


@functools.cache
def docker_available() -> bool:
    """True when the tests were asked to use a container engine and its Docker API answers."""
    if os.environ.get("CAPTURE_BRIDGE_TEST_DOCKER") != "1":
        return False
    try:
        # importlib: the repository's own docker/ folder would confuse a static import for mypy.
        docker = importlib.import_module("docker")
        with contextlib.closing(docker.from_env()) as client:
            client.ping()
        return True
    except Exception:
        return False


def mqtt_answers(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Whether a broker on host:port answers a CONNECT with a CONNACK that accepts it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ready-{uuid.uuid4().hex[:8]}",
                         protocol=MQTTProtocolVersion.MQTTv311)
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return False
    try:
        deadline = time.monotonic() + timeout
        while not client.is_connected() and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False  # the connection was closed: nothing behind the port yet
        return client.is_connected()
    finally:
        client.disconnect()
        client.loop(timeout=0.1)  # writes the DISCONNECT, and paho closes the socket after it


class MqttConnectWaitStrategy(WaitStrategy):
    """testcontainers' readiness check: a real MQTT CONNECT on the published port."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self._port = port

    def wait_until_ready(self, container: WaitStrategyTarget) -> None:
        port = int(container.get_exposed_port(self._port))
        if not self._poll(lambda: mqtt_answers(port)):
            raise TimeoutError(f"no MQTT CONNACK from 127.0.0.1:{port} within {self._startup_timeout:g}s")


class DockerBroker:
    """Mosquitto in a container: same settings as the local one, restartable on the same port."""

    tls = None

    def __init__(self, workdir: Path, image: str | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.image = image or os.environ.get(IMAGE_ENV, "eclipse-mosquitto:2")
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        # Started as root, the broker reads its config before it drops to its own user.
        conf.write_text("\n".join([f"listener {MQTT_PORT}", "allow_anonymous true",
                                   *mosquitto_settings("/mosquitto/data/"), "log_dest stdout"]) + "\n")
        self._ready = MqttConnectWaitStrategy(MQTT_PORT).with_startup_timeout(60).with_poll_interval(0.2)
        self._container = (DockerContainer(self.image)
                           .with_volume_mapping(str(conf), CONFIG, "ro")
                           .waiting_for(self._ready))
        # Loopback only, like the local broker: docker-py takes (host ip, port) for a binding.
        ports: dict[str, Any] = self._container.ports
        ports[f"{MQTT_PORT}/tcp"] = ("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        """mqtt:// URL of the published port."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> DockerBroker:
        """Create and start the container; returns once it answers MQTT."""
        self._container.start()
        return self

    def stop(self) -> None:
        """Remove the container (and its data)."""
        self._container.stop()

    def restart(self) -> None:
        """SIGTERM (mosquitto saves its sessions), start the same container again: same port, same data."""
        wrapped = self._container.get_wrapped_container()
        wrapped.stop(timeout=10)
        wrapped.start()
        self._ready.wait_until_ready(self._container)

    def log_text(self) -> str:
        """What the broker logged (for failure messages)."""
        out, err = self._container.get_logs()
        return (out + err).decode(errors="replace")
