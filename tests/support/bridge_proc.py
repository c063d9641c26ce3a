"""The real bridge as a subprocess (`python -m bridge run`), for end-to-end tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` laid over `base`, section by section."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class BridgeProcess:
    """Writes a config, starts the bridge, and keeps its log for inspection."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = workdir / "bridge.yaml"
        self.log_path = workdir / "bridge.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra_args: str) -> BridgeProcess:
        """Start the process (returns at once; wait for `online` with a probe)."""
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTURE_BRIDGE_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(self.config_path), *extra_args],
            cwd=self.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def signal(self, sig: int) -> None:
        """Send a signal."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: no goodbye, the last will must speak for us."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self._log.close()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log_text(self) -> str:
        """Everything the bridge wrote to stdout/stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 10.0) -> None:
        """Wait until the log contains `needle`."""
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in bridge log:\n{self.log_text()[-3000:]}")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)  # ok: polling a log file with a deadline


# What the `start_bridge` fixture (tests/conftest.py) hands a test: overrides -> a running bridge.
StartBridge = Callable[..., BridgeProcess]


@contextlib.contextmanager
def running_bridge(workdir: Path, config: dict[str, Any], *args: str) -> Iterator[BridgeProcess]:
    """A bridge process that is stopped (SIGTERM, then SIGKILL) whatever happens."""
    proc = BridgeProcess(workdir, config).start(*args)
    try:
        yield proc
    finally:
        try:
            proc.stop(timeout=15)
        except Exception:
            proc.kill()


def log_lines(bridge: BridgeProcess, needle: str) -> list[str]:
    """Lines of the bridge log containing `needle`."""
    return [line for line in bridge.log_text().splitlines() if needle in line]


def gaps(lines: list[str]) -> list[float]:
    """Seconds between consecutive human-format log lines (`2026-11-29 20:44:01,372 ...`)."""
    times = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in lines]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
