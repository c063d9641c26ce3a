"""Process plumbing shared by `bench.run` and `bench.soak`.

The broker (tests.support.broker.Broker), the mock cloud (`python -m bridge
mock-cloud`), the bridge (`python -m bridge run`) and the load generator
(`python -m bench.loadgen`) each run as their own process, all on 127.0.0.1.
Everything started here is registered in a `Cleanup` so that an exception,
Ctrl-C or SIGTERM kills every child and removes every temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import yaml

from tests.support.broker import Broker, free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOCALHOST = "127.0.0.1"


# --- /proc readings ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds (from /proc/PID/stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_of(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _kb(value: str) -> float:
    return int(value.split()[0]) / 1024.0


@dataclass(frozen=True)
class ProcSample:
    """One look at a process."""

    at: float
    rss_mb: float
    hwm_mb: float
    threads: int
    fds: int
    sockets: int
    cpu_s: float
    voluntary_switches: int

    def as_dict(self) -> dict[str, float]:
        """Plain data for JSON."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def sample(pid: int) -> ProcSample:
    """RSS, peak RSS (VmHWM), threads, open fds and sockets, CPU seconds of `pid`."""
    status = status_of(pid)
    fds = 0
    sockets = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        fds += 1
        with contextlib.suppress(OSError):
            if os.readlink(entry).startswith("socket:"):
                sockets += 1
    return ProcSample(
        at=time.monotonic(),
        rss_mb=_kb(status["VmRSS"]),
        hwm_mb=_kb(status["VmHWM"]),
        threads=int(status["Threads"]),
        fds=fds,
        sockets=sockets,
        cpu_s=cpu_seconds(pid),
        voluntary_switches=int(status.get("voluntary_ctxt_switches", "0")),
    )


def nofile_limit(pid: int) -> tuple[int | None, int | None]:
    """(soft, hard) RLIMIT_NOFILE of a running process, from /proc/PID/limits (None = unlimited/unknown)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return (int(soft) if soft.isdigit() else None, int(hard) if hard.isdigit() else None)
    return None, None


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, Python, Mosquitto and paho versions, kernel."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mosquitto = "unknown"
    with contextlib.suppress(OSError, RuntimeError, subprocess.SubprocessError):
        out = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=5, check=False)
        mosquitto = (out.stdout or out.stderr).splitlines()[0].strip()
    import paho.mqtt

    mem_total = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = line.split(":", 1)[1].strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total": mem_total,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "mosquitto": mosquitto,
        "paho_mqtt": getattr(paho.mqtt, "__version__", "unknown"),
        "kernel": platform.release(),
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "somaxconn": _read_int("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": _read_int("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    }


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- cleanup ---------------------------------------------------------------------------------


class Cleanup:
    """LIFO list of undo actions; SIGTERM/SIGHUP become KeyboardInterrupt so `finally` runs."""

    def __init__(self) -> None:
        self._actions: list[Callable[[], object]] = []

    def push(self, action: Callable[[], object]) -> None:
        """Run `action` at cleanup time (last pushed runs first)."""
        self._actions.append(action)

    def tempdir(self, prefix: str) -> Path:
        """A fresh temporary directory, removed at cleanup."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self.push(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def run(self) -> None:
        """Undo everything, newest first; errors are printed, never raised."""
        while self._actions:
            action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # cleanup must go on
                print(f"cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)

    def __enter__(self) -> Cleanup:
        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        # A second Ctrl-C during cleanup must not leave processes behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.run()
        finally:
            signal.signal(signal.SIGINT, previous)


def _raise_nofile() -> None:
    # For the mock cloud: 10k connections need 10k fds, and it does not raise its own limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _clean_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTURE_BRIDGE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_STATE_HOME"] = str(workdir)  # nothing may land in the user's home
    # No proxy may route loopback traffic anywhere else.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    env["NO_PROXY"] = env["no_proxy"] = f"{LOCALHOST},localhost"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    return proc.returncode


# --- the pieces ------------------------------------------------------------------------------


def start_broker(cleanup: Cleanup, workdir: Path, extra: str = "") -> Broker:
    """A private Mosquitto on a free port (the test suite's Broker); `extra` = more mosquitto.conf lines."""
    broker = Broker(workdir / "broker", extra=extra)
    cleanup.push(broker.stop)
    broker.start()
    return broker


@dataclass(frozen=True)
class BenchTls:
    """A CA made for this run and a server certificate it signed (for localhost and 127.0.0.1)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_bench_tls(workdir: Path) -> BenchTls:
    """A fresh private CA and server certificate (EC P-256, like the reference measurements)."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("localhost", LOCALHOST)
    tls = BenchTls(workdir / "bench-ca.pem", workdir / "cloud-cert.pem", workdir / "cloud-key.pem")
    ca.cert_pem.write_to_path(str(tls.ca_file))
    server.cert_chain_pems[0].write_to_path(str(tls.cert_file))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(tls.cert_file), append=True)
    server.private_key_pem.write_to_path(str(tls.key_file))
    return tls


class MockCloudProc:
    """`python -m bridge mock-cloud --any-device` in its own process, at a fixed latency."""

    def __init__(
        self,
        cleanup: Cleanup,
        workdir: Path,
        latency: float,
        tap: Path | None = None,
        *,
        tls: BenchTls | None = None,
        host: str = LOCALHOST,
    ) -> None:
        self.latency = latency
        self.port = free_port()
        self.tap = tap
        self.tls = tls
        self.host = host
        self.log_path = workdir / f"mock-cloud-{self.port}.log"
        self._log = self.log_path.open("wb")
        common = ["--host", host, "--port", str(self.port), "--latency", repr(latency)]
        if tls is not None:
            common += ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]
        if tap is None:
            command = [PYTHON, "-m", "bridge", "mock-cloud", *common, "--any-device"]
        else:
            command = [PYTHON, "-m", "bench.cloudtap", *common, "--times", str(tap)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT, env=_clean_env(workdir), stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True, preexec_fn=_raise_nofile,
        )
        cleanup.push(self.stop)
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, 30.0)
        if "mock-cloud listening on" not in line:
            raise RuntimeError(f"mock cloud did not start: {line!r} {self.log_path.read_text()[-2000:]}")
        self.pid = self.proc.pid

    @property
    def base_url(self) -> str:
        """The OpenApi base URL."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/OpenApi"

    def arrivals(self, start: float, end: float) -> list[tuple[float, str]]:
        """(arrival time (CLOCK_MONOTONIC), FAssetGUID) of each Instruction in [start, end], when tapped."""
        if self.tap is None or not self.tap.exists():
            return []
        out: list[tuple[float, str]] = []
        for line in self.tap.read_text().splitlines():
            at, _, guid = line.partition(" ")
            t = float(at)
            if start <= t <= end:
                out.append((t, guid))
        return sorted(out)

    def stop(self) -> None:
        """SIGTERM and wait."""
        terminate(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def _readline(stream: IO[bytes], timeout: float) -> str:
    """One line from a child's stdout, with a deadline."""
    box: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: box.put(stream.readline()), daemon=True)
    reader.start()
    try:
        return box.get(timeout=timeout).decode(errors="replace")
    except queue.Empty:
        return ""


def bridge_config(
    broker_url: str,
    cloud_url: str,
    workdir: Path,
    *,
    journal: bool = True,
    max_in_flight: int | None = None,
    extra_bridge: dict[str, Any] | None = None,
    ca_file: Path | None = None,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """A bridge config with a unique base topic and client id; the journal in `workdir`."""
    tag = uuid.uuid4().hex[:10]
    bridge: dict[str, Any] = {"journal": journal, "journal_path": str(workdir / "journal.sqlite")}
    if max_in_flight is not None:
        bridge["max_in_flight"] = max_in_flight
    bridge.update(extra_bridge or {})
    cloud: dict[str, Any] = {"base_url": cloud_url, "username": "demo", "password": "demo-password"}
    if ca_file is not None:
        cloud["ca_file"] = str(ca_file)
    return {
        "mqtt": {"url": broker_url, "client_id": f"bench-bridge-{tag}", "base_topic": f"bench-{tag}"},
        "cloud": cloud,
        "bridge": bridge,
        "homeassistant": {"enabled": False},
        "metrics": {"port": metrics_port, "host": LOCALHOST},
        "logging": {"level": "WARNING"},
    }


def scrape_metrics(port: int) -> dict[str, float]:
    """The bridge's /metrics as {name: value} for unlabelled series."""
    import urllib.request

    with urllib.request.urlopen(f"http://{LOCALHOST}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


class BridgeProc:
    """The real bridge: `python -m bridge run --config FILE`, output kept in a log file."""

    def __init__(
        self, cleanup: Cleanup, workdir: Path, config: dict[str, Any], *, inject: Path | None = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.base = str(config["mqtt"]["base_topic"])
        self.config_path = workdir / "bridge.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "bridge.log"
        self._log = self.log_path.open("wb")
        env = _clean_env(workdir)
        if inject is not None:
            # Diagnostics only: a directory with a sitecustomize.py that patches a library in the bridge process.
            env["PYTHONPATH"] = str(inject) + os.pathsep + env["PYTHONPATH"]
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bridge", "run", "--config", str(self.config_path)],
            cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        cleanup.push(self.kill)

    def stop(self, timeout: float = 30.0) -> tuple[int | None, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        started = time.monotonic()
        code = terminate(self.proc, timeout)
        self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL if still running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_text(self) -> str:
        """What the bridge printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LoadGenProc:
    """`python -m bench.loadgen` with its line protocol (ready -> go -> result)."""

    def __init__(
        self,
        cleanup: Cleanup,
        workdir: Path,
        port: int,
        base: str,
        *,
        devices: int,
        commands: int,
        rate: float | None,
        deadline: float,
        grace: float = 1.0,
        warmup: int = 0,
        detail: bool = False,
    ) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.loadgen", "--port", str(port), "--base", base, "--devices", str(devices),
             "--commands", str(commands), "--rate", str(rate or 0), "--deadline", str(deadline),
             "--grace", str(grace), "--warmup", str(warmup), *(["--detail"] if detail else [])],
            cwd=ROOT, env=_clean_env(workdir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        cleanup.push(lambda: terminate(self.proc, 5))
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def next_event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; raises on timeout, exit or an `error` event."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"load generator silent for {timeout:.0f}s") from None
        if not line:
            raise RuntimeError(f"load generator exited ({self.proc.wait()})")
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == "error":
            raise RuntimeError(f"load generator: {event.get('message')}")
        return event

    def go(self) -> None:
        """Start publishing."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """Wait for the process to exit."""
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            terminate(self.proc, 5)


NODELAY_PATCH = """\
# Written by bench.run --bridge-nodelay: TCP_NODELAY on paho's socket (paho leaves Nagle on).
import socket

import paho.mqtt.client as _paho

_original = _paho.Client._create_socket_connection


def _create_socket_connection(self):
    sock = _original(self)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


_paho.Client._create_socket_connection = _create_socket_connection
"""


def nodelay_injection(workdir: Path) -> Path:
    """A directory whose sitecustomize.py turns Nagle off on the bridge's MQTT socket."""
    path = workdir / "inject-nodelay"
    path.mkdir(parents=True, exist_ok=True)
    (path / "sitecustomize.py").write_text(NODELAY_PATCH)
    return path


def new_workdir(cleanup: Cleanup, keep: bool, prefix: str = "capture-bench-") -> Path:
    """The run's temporary directory (kept, and printed, with --keep)."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        print(f"keeping work files in {path}")
        return path
    return cleanup.tempdir(prefix)


def write_results(stem: str, data: dict[str, Any], markdown: str, latest: str = "latest") -> tuple[Path, Path]:
    """bench/results/<stem>.json, plus <latest>.json and <latest>.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{stem}.json"
    text = json.dumps(data, indent=2, sort_keys=False)
    path.write_text(text + "\n")
    (RESULTS / f"{latest}.json").write_text(text + "\n")
    md = RESULTS / f"{latest}.md"
    md.write_text(markdown)
    return path, md
