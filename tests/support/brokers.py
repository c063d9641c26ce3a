"""The broker matrix: every MQTT broker these machines can run, each private to the tests.

Each one gets a free loopback port, its own config and data directory under the
test's temporary folder, and never touches a broker the machine already runs as a
service. `restart()` keeps the port and whatever the broker persists. A broker that
is not installed raises `Unavailable` with what to install, and the tests skip it
with that reason.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.broker import Broker, free_port, mosquitto_binary, wait_port

ROOT = Path(__file__).resolve().parents[2]
AEDES_DIR = ROOT / "tests" / "support" / "aedes"
RABBITMQ_HOME = Path("/usr/lib/rabbitmq")
EPMD_PORT = 4369


def _listening(port: int) -> bool:
    try:
        wait_port(port, timeout=0.1)
        return True
    except TimeoutError:
        return False


class Unavailable(Exception):
    """This broker cannot run on this machine (the message says what to install)."""


class MatrixBroker:
    """One broker of the matrix: a process in its own process group, on its own port."""

    product = ""
    # Whether the bridge must be told `protocol: 3.1.1` (only the Mosquitto 3.1.1 variant).
    force_protocol: str | None = None
    # Bridge settings (timing only) that keep this broker's tests quick; test_connect_and_capture
    # runs without them.
    quick_settings: dict[str, Any] = {}
    start_timeout = 15.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "broker.log"
        self.version = self.installed_version()

    @property
    def name(self) -> str:
        """The id of this broker in test names."""
        return self.product.lower()

    @property
    def url(self) -> str:
        """mqtt:// URL of the listener."""
        return f"mqtt://127.0.0.1:{self.port}"

    def installed_version(self) -> str:
        """The installed version, or `Unavailable`."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """The command line that runs the broker in the foreground (writes its config first)."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The broker's environment."""
        return dict(os.environ)

    def start(self) -> MatrixBroker:
        """Start and wait until the MQTT port accepts connections."""
        log = self.log_path.open("ab")
        # Own session: stop() signals the whole group (RabbitMQ's script forks the Erlang VM).
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        try:
            wait_port(self.port, timeout=self.start_timeout)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"{self.product} did not listen on {self.port}: {self.log_text()[-2000:]}") from None
        return self

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown that saves what the broker persists), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        # The group may outlive its leader (RabbitMQ's VM under its start script).
        self._signal_group(signal.SIGKILL)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the whole group."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good, leaving nothing of ours running."""
        self.stop()

    def log_text(self) -> str:
        """What the broker wrote (for failure messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return f"{self.product} {self.version} on {self.port}"


class MosquittoBroker(MatrixBroker):
    """Mosquitto 2 with persistence, via the suite's own `Broker`; the bridge speaks MQTT 5 to it."""

    product = "Mosquitto"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._inner = Broker(workdir)
        self.port = self._inner.port

    @property
    def name(self) -> str:
        return "mosquitto-5"

    def installed_version(self) -> str:
        try:
            binary = mosquitto_binary()
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from None
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"mosquitto version (\S+)", out)
        return found.group(1) if found else "?"

    def start(self) -> MatrixBroker:
        self._inner.start()
        return self

    def stop(self) -> None:
        self._inner.stop()

    def kill(self) -> None:
        self._inner.stop()

    def log_text(self) -> str:
        return self._inner.log_text()


class Mosquitto311Broker(MosquittoBroker):
    """The same Mosquitto, with the bridge told to speak MQTT 3.1.1."""

    force_protocol = "3.1.1"

    @property
    def name(self) -> str:
        return "mosquitto-3.1.1"


class RabbitMqBroker(MatrixBroker):
    """A private node of the Debian `rabbitmq-server` package with the MQTT plugin.

    Own node name, AMQP/distribution/MQTT ports, data, log, config and
    enabled-plugins files: the machine's own RabbitMQ node (if any) is untouched;
    only epmd, the Erlang port mapper, is shared, and it tells nodes apart by name.
    """

    product = "RabbitMQ"
    start_timeout = 90.0  # the Erlang VM boots in ~15 s on two busy cores

    def start(self) -> MatrixBroker:
        if not hasattr(self, "_epmd_was_running"):
            self._epmd_was_running = _listening(EPMD_PORT)
        return super().start()

    def close(self) -> None:
        # The VM starts epmd (Erlang's shared port mapper) as a daemon when none runs. Stop it
        # again if we caused it; `epmd -kill` refuses while any other node is registered.
        self.stop()
        if not getattr(self, "_epmd_was_running", True) and shutil.which("epmd"):
            subprocess.run(["epmd", "-kill"], capture_output=True, check=False, timeout=10)

    def installed_version(self) -> str:
        script = RABBITMQ_HOME / "bin" / "rabbitmq-server"
        found = sorted((RABBITMQ_HOME / "lib").glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*"))
        if not script.exists() or not found:
            raise Unavailable("rabbitmq-server is not installed: apt-get install -y rabbitmq-server")
        return found[-1].name.removeprefix("rabbitmq_mqtt-")

    def env(self) -> dict[str, str]:
        node = f"cb-test-{self.port}@localhost"
        amqp_port = free_port()
        dist_port = free_port()
        conf = self.workdir / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.default = 127.0.0.1:{amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
            # guest may only log in over loopback by default; the listener is loopback-only anyway.
            "loopback_users = none\n"
            "log.console = true\n"
            "log.file = false\n"
        )
        plugins = self.workdir / "enabled_plugins"
        plugins.write_text("[rabbitmq_mqtt].\n")
        env = dict(os.environ)
        env.update({
            # The Erlang cookie is created in $HOME: a private one keeps the system node's apart.
            "HOME": str(self.workdir),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
        })
        return env

    def command(self) -> list[str]:
        return [str(RABBITMQ_HOME / "bin" / "rabbitmq-server")]


class NatsBroker(MatrixBroker):
    """nats-server with JetStream (file storage) and its MQTT listener."""

    product = "NATS"

    def installed_version(self) -> str:
        binary = self._binary()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"v(\d+\.\d+\.\d+)", out)
        return found.group(1) if found else "?"

    @staticmethod
    def _binary() -> str:
        found = shutil.which("nats-server") or next(
            (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None
        )
        if found is None:
            raise Unavailable("nats-server is not installed: apt-get install -y nats-server")
        return found

    def command(self) -> list[str]:
        conf = self.workdir / "nats.conf"
        conf.write_text(
            f"server_name: cb-test-{self.port}\n"
            f"listen: 127.0.0.1:{free_port()}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.workdir / 'jetstream'))} }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n"
        )
        return [self._binary(), "-c", str(conf)]


class AedesBroker(MatrixBroker):
    """Aedes on Node.js (tests/support/aedes), with its default in-memory persistence."""

    product = "Aedes"

    def installed_version(self) -> str:
        node = shutil.which("node")
        package = AEDES_DIR / "node_modules" / "aedes" / "package.json"
        if node is None:
            raise Unavailable("Node.js is not installed: apt-get install -y nodejs npm")
        if not package.exists():
            raise Unavailable(f"aedes is not installed: npm ci --prefix {AEDES_DIR.relative_to(ROOT)}")
        return str(json.loads(package.read_text())["version"])

    def command(self) -> list[str]:
        return [shutil.which("node") or "node", str(AEDES_DIR / "server.mjs"), str(self.port)]


class AmqttBroker(MatrixBroker):
    """amqtt (the `amqtt` dev dependency) with its default, in-memory, session store."""

    product = "amqtt"
    # amqtt never answers an MQTT 5 CONNECT: each bridge start waits connect_timeout (10 s) in
    # silence before `auto` falls back to 3.1.1.
    quick_settings = {"mqtt": {"connect_timeout": 2.0}}

    def installed_version(self) -> str:
        try:
            return importlib.metadata.version("amqtt")
        except importlib.metadata.PackageNotFoundError:
            raise Unavailable("amqtt is not installed: pip install -e '.[dev]'") from None

    def command(self) -> list[str]:
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        script = Path(sys.executable).with_name("amqtt")
        return [str(script), "-c", str(conf)]


MATRIX: dict[str, type[MatrixBroker]] = {
    "mosquitto-5": MosquittoBroker,
    "mosquitto-3.1.1": Mosquitto311Broker,
    "rabbitmq": RabbitMqBroker,
    "nats": NatsBroker,
    "aedes": AedesBroker,
    "amqtt": AmqttBroker,
}
