"""The mock cloud as a subprocess (`python -m bridge mock-cloud`), so it does not share our GIL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.broker import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


class MockCloudProcess:
    """`capture-bridge mock-cloud --port <free port> ARGS`, logging to `workdir/mock-cloud.log`."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.port = free_port()
        self._log = (workdir / "mock-cloud.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "mock-cloud", "--port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port, timeout=30)

    @property
    def url(self) -> str:
        """The OpenApi base URL."""
        return f"http://127.0.0.1:{self.port}/OpenApi"

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it hangs."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
