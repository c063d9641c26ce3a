"""A private Mosquitto for tests: its own port, config and persistence directory.

The local `mosquitto` binary. With CAPTURE_BRIDGE_TEST_DOCKER=1 and a Docker API that answers,
the suite's shared broker is a container instead (tests/support/container_broker.py).
"""

from __future__ import annotations

import getpass
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts on the port, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)  # ok: polling a port with a deadline


def mosquitto_binary() -> str:
    """The mosquitto executable (Debian installs it in /usr/sbin, which may not be on PATH)."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
    return found


def mosquitto_settings(persistence_location: str) -> list[str]:
    """What every test Mosquitto runs with, local or in a container (tests/support/container_broker.py)."""
    return [
        "persistence true",
        f"persistence_location {persistence_location}",
        "persistence_file mosquitto.db",
        "autosave_interval 1",
        # Back-pressure and flood tests queue tens of thousands of messages for one client.
        "max_queued_messages 100000",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]


@dataclass
class TlsFiles:
    """Server side of a TLS listener."""

    ca: Path
    cert: Path
    key: Path
    require_certificate: bool = False


class Broker:
    """A Mosquitto process on a free port; `restart()` keeps port and persisted sessions."""

    def __init__(
        self,
        workdir: Path,
        *,
        tls: TlsFiles | None = None,
        password_file: Path | None = None,
        extra: str = "",
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.password_file = password_file
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        """mqtt:// or mqtts:// URL of the listener."""
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            *mosquitto_settings(f"{self.workdir}/"),
            f"log_dest file {self.log_path}",
        ]
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.tls:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
            if self.tls.require_certificate:
                lines.append("require_certificate true")
        if not re.search(r"^user ", self.extra, re.M):
            # Started as root, mosquitto drops to the `mosquitto` user, which cannot write into the
            # tests' private (0700) folders: no log and, silently, no persistence across a restart.
            lines.append(f"user {getpass.getuser()}")
        if self.extra:
            lines.append(self.extra)
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> Broker:
        """Start and wait until it accepts connections."""
        conf = self._config()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_text()}") from None
        return self

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its sessions), then wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """What mosquitto logged (for failure messages)."""
        return self.log_path.read_text() if self.log_path.exists() else ""
