"""`make image-check`: build the image and run docker/compose.yml for real, then check what users rely on.

Docker Engine with Compose v2 or 1.x where it answers, else Podman with `podman compose` or
podman-compose (checks/engines.py; `--engine`, `--compose` choose). One PASS/FAIL line per check,
exit 1 on any FAIL. What the unit tests can only read in the files (tests/unit/test_containers.py),
this proves on a running stack: commands wait for a stopped bridge, a stop during a capture
finishes it (one POST, exit 0), `down`/`up` keeps the broker's data, the container runs as a
numeric non-root user on a read-only root filesystem, and the HEALTHCHECK turns healthy.

Where the pinned base images cannot be pulled (no registry reachable), it builds stand-ins with
mmdebstrap from Debian bookworm (python3 3.11, Debian's mosquitto) and says so: the image is then
built `--build-arg PYTHON_IMAGE=<stand-in>` and the broker runs the stand-in, nothing else changes.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from checks.engines import (
    STANDIN_MOSQUITTO,
    STANDIN_PYTHON,
    Engine,
    base_image,
    find_engine,
    mosquitto_standin,
    podman_limits,
    python_standin,
    run,
)
from checks.engines import note as engine_note
from checks.report import Report
from tests.support.broker import free_port, wait_port
from tests.support.compose import compose_default, grace_seconds, load_yaml
from tests.support.http import http_get
from tests.support.probe import Probe
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yml"
SCALE_OUT = ROOT / "docker" / "compose.scale-out.yml"
PROJECT = "capture-bridge-check"
BASE = "devices"
# The mock cloud holds every Instruction this long, like the real cloud waiting for a device.
LATENCY = 15.0
# Polling a container from outside, with a deadline: four times a second.
POLL = 0.25


def pinned_python_image() -> str:
    """The Dockerfile's default base image (name@digest)."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise SystemExit("docker/Dockerfile has no `ARG PYTHON_IMAGE=...` line")
    return match.group(1)


# -- output -------------------------------------------------------------------------------------


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """docker/compose.yml under its own project name, on free host ports, with a slow mock cloud."""

    engine: Engine
    env: dict[str, str]
    files: list[str]
    broker_port: int
    metrics_port: int
    # The highest file number seen in a state: the mock cloud numbers its successful
    # Instructions 1, 2, 3..., so this counts the POSTs it answered (it restarts at 0 with it).
    posts: int = 0

    def compose(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        files = [arg for path in self.files for arg in ("-f", path)]
        return run([*self.engine.compose_cmd, "-p", PROJECT, *files, *args], env=self.env, check=check,
                   timeout=timeout)

    def container(self, service: str) -> str:
        out = self.engine("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
                          "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        if not out:
            raise RuntimeError(f"no container for service {service}")
        return out[0]

    def exec_python(self, service: str, code: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.engine("exec", self.container(service), "python", "-c", code, check=check)

    def healthz(self) -> int:
        try:
            return http_get(f"http://127.0.0.1:{self.metrics_port}/healthz")[0]
        except OSError:  # not listening (yet)
            return 0

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    def wait_bridge_ready(self, timeout: float = 90) -> None:
        wait_until(lambda: self.healthz() == 200, timeout, "bridge /healthz 200", interval=POLL)


def guid() -> str:
    return str(uuid.uuid4())


def command(probe: Probe, device: str, request_id: str) -> None:
    probe.publish(f"{BASE}/{device}/capture/set", {"type": "photo", "request_id": request_id})


def state_of(probe: Probe, device: str, request_id: str, timeout: float, stack: Stack) -> dict[str, Any]:
    """The final state of one command; the stack keeps count of the mock cloud's POSTs from it."""
    topic = f"{BASE}/{device}/capture/state"
    found = probe.wait_for(
        lambda m: m.topic == topic and bool(m.payload) and m.json().get("request_id") == request_id
        and m.json().get("status") != "pending",
        timeout=timeout,
    )
    state = found[0].json()
    assert isinstance(state, dict)
    if state.get("file_id"):
        stack.posts = max(stack.posts, file_number(state))
    return state


def file_number(state: dict[str, Any]) -> int:
    """The mock cloud numbers the files of its successful Instructions 1, 2, 3...: the count of POSTs."""
    file_id = str(state.get("file_id"))
    match = re.search(r"_(\d+)$", file_id)
    if match is None:
        raise ValueError(f"file_id {file_id!r} does not end in _<number>")
    return int(match.group(1))


@contextlib.contextmanager
def probe_on(port: int) -> Iterator[Probe]:
    probe = Probe(port)
    try:
        probe.subscribe(f"{BASE}/+/capture/state")
        yield probe
    finally:
        probe.close()


# -- the checks ---------------------------------------------------------------------------------


def check_image(report: Report, engine: Engine, image: str) -> None:
    info = engine.inspect(image, "image")
    config = info.get("Config") or {}
    user = str(config.get("User", ""))
    report.check("image: USER is numeric and not root", bool(re.fullmatch(r"[1-9]\d*(:\d+)?", user)), user)
    # Docker keeps the HEALTHCHECK in Config, Podman next to it.
    health = config.get("Healthcheck") or info.get("Healthcheck") or {}
    test = " ".join(health.get("Test") or [])
    report.check("image: HEALTHCHECK asks /healthz", "/healthz" in test, test[:60] + "...")
    entrypoint = config.get("Entrypoint") or []
    report.check("image: tini is PID 1 (ENTRYPOINT)", bool(entrypoint) and entrypoint[0].endswith("tini"),
                 " ".join(entrypoint))
    size = engine("image", "inspect", image, "--format", "{{.Size}}").stdout.strip()
    engine_note(f"image size {int(size) / 1e6:.0f} MB")


def check_container(report: Report, stack: Stack) -> None:
    bridge = stack.container("bridge")
    ids = stack.exec_python("bridge", "import os; print(os.getuid(), os.getgid())").stdout.split()
    report.check("container: runs as a numeric non-root user", ids == ["10001", "10001"], " ".join(ids))
    account = stack.exec_python(
        "bridge", "import pwd; p = pwd.getpwuid(10001); print(p.pw_shell, p.pw_dir)").stdout.split()
    report.check("container: the user has no login shell and no home", account == ["/usr/sbin/nologin", "/nonexistent"],
                 " ".join(account))
    info = stack.engine.inspect(bridge)
    read_only = bool(info.get("HostConfig", {}).get("ReadonlyRootfs"))
    write = stack.exec_python("bridge", "open('/opt/venv/probe', 'w')")
    report.check("container: root filesystem is read-only", read_only and "Read-only file system" in write.stderr,
                 f"ReadonlyRootfs={read_only}")
    listing = stack.exec_python("bridge", "import os; print(sorted(os.listdir('/data')))").stdout.strip()
    report.check("container: /data holds the journal and nothing from a home directory",
                 "journal.sqlite" in listing and ".bashrc" not in listing and ".profile" not in listing, listing)
    pid1 = stack.exec_python("bridge", "print(open('/proc/1/cmdline').read().split(chr(0))[0])").stdout.strip()
    report.check("container: PID 1 is tini", pid1.endswith("tini"), pid1)
    leftovers = stack.exec_python(
        "bridge",
        "import importlib.util, os; print(os.path.exists('/wheels'), importlib.util.find_spec('pip') is not None)",
    ).stdout.split()
    report.check("container: no wheels and no pip left in the image", leftovers == ["False", "False"],
                 f"/wheels, pip: {' '.join(leftovers)}")
    files = stack.exec_python(
        "bridge", "import importlib.metadata as m; print([str(f) for f in m.distribution('capture-bridge').files])"
    ).stdout
    report.check("container: LICENSE ships in the wheel", "LICENSE" in files)
    env = " ".join(info.get("Config", {}).get("Env") or [])
    shown = stack.engine("exec", bridge, "capture-bridge", "check-config", check=False).stdout
    report.check("container: cloud password comes from a secret file, not the environment, and check-config masks it",
                 "demo-password" not in env and "PASSWORD_FILE=/run/secrets/cloud_password" in env
                 and "demo-password" not in shown and '"password": "**********"' in shown)
    ports = " ".join(stack.engine("port", stack.container("mosquitto")).stdout.split()
                     + stack.engine("port", bridge).stdout.split())
    bound = re.findall(r"->\s*(\S+):\d+", ports)
    report.check("compose: broker and metrics published on 127.0.0.1 only",
                 len(bound) == 2 and all(host == "127.0.0.1" for host in bound), ports)


def check_health(report: Report, stack: Stack) -> None:
    bridge = stack.container("bridge")
    started = time.monotonic()
    status = ""
    # Podman runs health checks from systemd timers; where there is no systemd, run them by hand
    # (the same HEALTHCHECK command, the same status bookkeeping).
    manual = stack.engine.name == "podman" and not Path("/run/systemd/system").exists()
    while time.monotonic() - started < 90:
        if manual:
            stack.engine("healthcheck", "run", bridge, check=False)
        state = stack.engine.inspect(bridge).get("State", {})
        status = str((state.get("Health") or state.get("Healthcheck") or {}).get("Status", ""))
        if status == "healthy":
            break
        time.sleep(1)  # ok: polling the engine's health status, with a deadline
    how = " (podman healthcheck run: no systemd timers here)" if manual else ""
    report.check("HEALTHCHECK turns healthy", status == "healthy",
                 f"{status or 'no status'} after {time.monotonic() - started:.0f} s{how}")


def check_capture(report: Report, stack: Stack) -> None:
    """A capture through the compose broker."""
    with probe_on(stack.broker_port) as probe:
        command(probe, "truck-12", "check-first")
        state = state_of(probe, "truck-12", "check-first", LATENCY + 30, stack)
    report.check("a capture through the compose broker -> ok", state.get("status") == "ok",
                 f"status {state.get('status')}, file {state.get('file_id')}")


def check_stopped_bridge(report: Report, stack: Stack) -> None:
    stack.compose("stop", "bridge")
    devices = [guid() for _ in range(5)]
    with probe_on(stack.broker_port) as probe:
        for n, device in enumerate(devices):
            command(probe, device, f"while-stopped-{n}")
        started = time.monotonic()
        stack.compose("start", "bridge")
        states = []
        deadline = started + LATENCY + 60
        for n, device in enumerate(devices):
            with contextlib.suppress(TimeoutError):
                states.append(state_of(probe, device, f"while-stopped-{n}", deadline - time.monotonic(), stack))
    ok = sum(1 for s in states if s.get("status") == "ok")
    report.check("bridge stopped, 5 commands published, bridge started -> 5 states", ok == 5,
                 f"{ok}/5 ok in {time.monotonic() - started:.0f} s")


def check_stop_during_capture(report: Report, stack: Stack, grace: float) -> None:
    device = guid()
    with probe_on(stack.broker_port) as probe:
        stack.wait_bridge_ready()
        before = stack.posts  # POSTs the mock cloud has answered so far
        command(probe, device, "stop-during")
        wait_until(lambda: (stack.metric("capture_bridge_in_flight") or 0) >= 1, 20, "the capture reached the cloud",
                   interval=POLL)
        started = time.monotonic()
        stack.compose("stop", "bridge", timeout=grace + 60)
        took = time.monotonic() - started
        state = stack.engine.inspect(stack.container("bridge")).get("State", {})
        code = state.get("ExitCode")
        report.check(f"stop during a {LATENCY:.0f} s capture -> clean exit 0 within the {grace:.0f} s grace period",
                     code == 0 and took < grace, f"exit {code} after {took:.1f} s")
        try:
            first = state_of(probe, device, "stop-during", 5, stack)
        except TimeoutError:
            first = {}
        report.check("the capture running at stop finished and its state was published before exit",
                     first.get("status") == "ok", f"status {first.get('status')}")
        # Restart: a journal replay or a retry of the stopped capture would be a second POST, and
        # the next capture's file number would be higher than before + 2.
        stack.compose("start", "bridge")
        stack.wait_bridge_ready()
        command(probe, device, "after-restart")
        try:
            state_of(probe, device, "after-restart", LATENCY + 30, stack)
        except TimeoutError:
            report.check("exactly one POST at the mock cloud for the stopped capture", False,
                         "no state for the capture after the restart")
            return
        repeats = [m for m in probe.messages if m.payload and m.json().get("request_id") == "stop-during"
                   and m.json().get("status") != "pending"]
        posts = stack.posts - before - 1
        report.check("exactly one POST at the mock cloud for the stopped capture",
                     posts == 1 and len(repeats) <= 1,
                     f"{posts} POST(s), {len(repeats)} final state(s) for it")


def check_down_up(report: Report, stack: Stack) -> None:
    stack.compose("down")
    stack.posts = 0  # a new mock cloud numbers from 1 again
    volumes = stack.engine("volume", "ls", "--format", "{{.Name}}").stdout.split()
    kept = sorted(v for v in volumes if v.startswith(PROJECT))
    named = f"{PROJECT}_broker-data" in kept
    report.check("down keeps the broker's named volume", named, f"volumes: {', '.join(kept)}")
    stack.compose("up", "-d", "mosquitto")
    wait_port(stack.broker_port, 60)
    device = guid()
    with probe_on(stack.broker_port) as probe:
        retained = probe.wait_for(lambda m: m.retain and m.topic == f"{BASE}/truck-12/capture/state", timeout=10)
        report.check("down + up keeps retained states", bool(retained) and retained[0].json().get("status") == "ok",
                     f"retained {BASE}/truck-12/capture/state: {retained[0].json().get('request_id')}")
        command(probe, device, "while-down")
        stack.compose("up", "-d")
        try:
            state = state_of(probe, device, "while-down", LATENCY + 60, stack)
        except TimeoutError:
            state = {}
    report.check("down + up keeps the bridge's session (command published while it was down -> state)",
                 state.get("status") == "ok", f"status {state.get('status')}")


def member_ok_commands(stack: Stack, service: str) -> int:
    """How many commands one bridge finished ok, from its own /metrics inside its container."""
    code = ("import re, urllib.request as u\n"
            "t = u.urlopen('http://127.0.0.1:9108/metrics', timeout=3).read().decode()\n"
            "ok = re.findall(r'^capture_bridge_commands_total\\{[^}]*status=\"ok\"[^}]*\\} (\\S+)$', t, re.M)\n"
            "print(sum(float(v) for v in ok))")
    out = stack.exec_python(service, code).stdout.strip()
    return int(float(out)) if out else -1


def check_scale_out_run(report: Report, stack: Stack) -> None:
    """The scale-out override for real: each command runs once, on one of the members."""
    stack.compose("down")
    stack.posts = 0  # a new mock cloud numbers from 1 again
    stack.files = [*stack.files, str(SCALE_OUT)]  # from here on, `down` removes the extra members too
    stack.compose("up", "-d")
    members = ["bridge", "bridge-b", "bridge-c"]
    healthz = "import urllib.request as u; u.urlopen('http://127.0.0.1:9108/healthz', timeout=3)"
    for member in members:
        def connected(member: str = member) -> bool:
            return stack.exec_python(member, healthz).returncode == 0

        wait_until(connected, 90, f"{member} connected", interval=POLL)
    devices = [guid() for _ in range(6)]
    with probe_on(stack.broker_port) as probe:
        before = stack.posts
        for n, device in enumerate(devices):
            command(probe, device, f"shared-{n}")
        deadline = time.monotonic() + LATENCY + 45
        done = 0
        for n, device in enumerate(devices):
            with contextlib.suppress(TimeoutError):
                done += state_of(probe, device, f"shared-{n}", deadline - time.monotonic(), stack)["status"] == "ok"
        # One more capture after them: its file number shows how many POSTs the six made.
        command(probe, devices[0], "shared-after")
        state_of(probe, devices[0], "shared-after", LATENCY + 30, stack)
        finals = [m.json().get("request_id") for m in probe.messages
                  if m.payload and str(m.json().get("request_id", "")).startswith("shared-")
                  and m.json().get("status") != "pending"]
    share = {member: member_ok_commands(stack, member) for member in members}
    posts = stack.posts - before - 1
    report.check("scale-out: 6 commands -> 6 states and 6 POSTs, shared among the members",
                 done == 6 and posts == 6 and len(finals) == 7 and sum(1 for v in share.values() if v > 0) >= 2,
                 f"{done}/6 ok, {posts} POSTs, ok per member {share}")


def check_stack_starts(report: Report, stack: Stack) -> bool:
    """`up -d`, then the broker listens and the bridge reports connected; else the bridge's last log lines."""
    started = time.monotonic()
    try:
        stack.compose("up", "-d")
        wait_port(stack.broker_port, 60)
        stack.wait_bridge_ready()
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        logs = stack.compose("logs", "--tail=20", "bridge", check=False)
        report.check("the stack starts: broker listening, bridge /healthz 200", False,
                     f"{type(exc).__name__}: {str(exc)[-800:]}")
        print((logs.stdout + logs.stderr)[-3000:], flush=True)
        return False
    return report.check("the stack starts: broker listening, bridge /healthz 200", True,
                        f"{time.monotonic() - started:.0f} s")


def check_startup_sigterm(report: Report, engine: Engine, image: str) -> None:
    """SIGTERM right after start (before Python has its handlers): the container must still stop."""
    times: list[float] = []
    codes: list[str] = []
    for n in range(3):
        name = f"{PROJECT}-sigterm-{n}"
        engine("rm", "-f", "-v", name, check=False)  # a leftover of an interrupted run
        engine("run", "-d", "--name", name, "--network", "none", "-e", "CAPTURE_BRIDGE_CLOUD__TOKEN=check",
               image)
        started = time.monotonic()
        try:
            engine("kill", "--signal", "TERM", name, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                engine("wait", name, check=False, timeout=15)
            took = time.monotonic() - started
            state = engine.inspect(name).get("State", {})
            running = state.get("Running")
            codes.append(str(state.get("ExitCode")))
        finally:
            engine("rm", "-f", "-v", *(["-t", "0"] if engine.name == "podman" else []), name, check=False)
        times.append(float("inf") if running else took)
    report.check("SIGTERM during start-up stops the container (3 tries)", all(t < 10 for t in times),
                 ", ".join("hung" if t == float("inf") else f"{t:.1f} s" for t in times)
                 + f"; exit codes {', '.join(codes)} (143: killed by the signal before Python handled it)")


def check_scale_out_config(report: Report, stack: Stack) -> None:
    """The scale-out override puts every member in the group, each with its own id and journal."""
    files = [*stack.files[:1], str(SCALE_OUT)]
    merged = yaml.safe_load(run([*stack.engine.compose_cmd, "-p", PROJECT, *[a for f in files for a in ("-f", f)],
                                 "config"], env=stack.env).stdout)
    members = {name: svc for name, svc in merged["services"].items()
               if "CAPTURE_BRIDGE_MQTT__URL" in (svc.get("environment") or {})}
    groups = {svc["environment"].get("CAPTURE_BRIDGE_MQTT__SHARED_GROUP") for svc in members.values()}
    ids = [svc["environment"].get("CAPTURE_BRIDGE_MQTT__CLIENT_ID") for svc in members.values()]
    builds = [name for name, svc in merged["services"].items() if svc.get("build")]
    report.check("scale-out override: every member in the group, own client_id, one build",
                 len(members) >= 2 and groups == {"capture"} and len(set(ids)) == len(ids) and len(builds) == 1,
                 f"members {sorted(members)}, groups {groups}, builds {builds}")


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running (and its volumes) at the end")
    parser.add_argument("--rebuild-standins", action="store_true", help="rebuild the stand-in base images")
    parser.add_argument("--engine", choices=["docker", "podman"], help="use only this engine (default: Docker "
                        "where it answers and has a compose, else Podman)")
    parser.add_argument("--compose", help="the compose command to use, e.g. docker-compose where Compose v2 is "
                        "installed too (default: docker compose, else docker-compose; podman compose, else "
                        "podman-compose)")
    args = parser.parse_args(argv)

    report = Report()
    engine = find_engine(args.engine, args.compose)
    print(f"image-check with {engine.version}", flush=True)
    compose = load_yaml(COMPOSE)
    python_ref = pinned_python_image()
    mosquitto_ref = compose_default(compose["services"]["mosquitto"]["image"])
    python_image = base_image(engine, python_ref, STANDIN_PYTHON, python_standin, args.rebuild_standins)
    mosquitto_image = base_image(engine, mosquitto_ref, STANDIN_MOSQUITTO, mosquitto_standin, args.rebuild_standins)
    if engine.name == "podman":
        podman_limits(engine, python_image)
    if python_image != python_ref:
        engine_note(f"the image is built with --build-arg PYTHON_IMAGE={python_image} instead of {python_ref}")
    if mosquitto_image != mosquitto_ref:
        engine_note(f"the broker runs MOSQUITTO_IMAGE={mosquitto_image} instead of {mosquitto_ref}")
    image = f"localhost/{PROJECT}:latest"
    grace = grace_seconds(str(compose["services"]["bridge"]["stop_grace_period"]))

    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        override = Path(tmp) / "compose.check.yml"
        override.write_text(yaml.safe_dump({"services": {"mock-cloud": {"command": [
            "mock-cloud", "--host", "0.0.0.0", "--port", "8092", "--strict", "--any-device",
            "--latency", str(LATENCY)]}}}), encoding="utf-8")
        env = dict(engine.env, PYTHON_IMAGE=python_image, MOSQUITTO_IMAGE=mosquitto_image,
                   CAPTURE_BRIDGE_IMAGE=image, BUILDAH_FORMAT="docker")
        stack = Stack(engine, env, [str(COMPOSE), str(override)], free_port(), free_port())
        env.update(BROKER_HOST_PORT=str(stack.broker_port), METRICS_HOST_PORT=str(stack.metrics_port))
        engine_note(f"project {PROJECT}: broker on 127.0.0.1:{stack.broker_port}, metrics on "
                    f"127.0.0.1:{stack.metrics_port}, mock cloud latency {LATENCY:.0f} s, grace {grace:.0f} s")
        stack.compose("down", "-v", check=False)
        try:
            started = time.monotonic()
            previous = engine("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
            built = stack.compose("build", check=False)
            current = engine("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
            if previous and current and previous != current:
                engine("rmi", previous, check=False)  # the last run's image, now untagged: no pile-up
            if not report.check("compose builds the image from the current tree", built.returncode == 0,
                                f"{time.monotonic() - started:.0f} s, FROM {python_image}"):
                print((built.stdout + built.stderr)[-3000:])
                return 1
            check_image(report, engine, image)
            check_scale_out_config(report, stack)
            if not check_stack_starts(report, stack):
                return 1
            steps: list[tuple[str, Callable[[], object]]] = [
                ("container", lambda: check_container(report, stack)),
                ("healthcheck", lambda: check_health(report, stack)),
                ("capture", lambda: check_capture(report, stack)),
                ("commands while stopped", lambda: check_stopped_bridge(report, stack)),
                ("stop during a capture", lambda: check_stop_during_capture(report, stack, grace)),
                ("down + up", lambda: check_down_up(report, stack)),
                ("scale-out", lambda: check_scale_out_run(report, stack)),
                ("SIGTERM during start-up", lambda: check_startup_sigterm(report, engine, image)),
            ]
            for name, step in steps:
                try:
                    step()
                except (RuntimeError, TimeoutError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                    report.check(name, False, f"{type(exc).__name__}: {str(exc)[-1500:]}")
        finally:
            if args.keep:
                engine_note(f"stack left running: {' '.join(engine.compose_cmd)} -p {PROJECT} down -v")
            else:
                stack.compose("down", "-v", check=False)
    total = report.passes + len(report.failures)
    print(f"image-check: {report.passes}/{total} passed" + (f"; FAILED: {', '.join(report.failures)}"
                                                            if report.failures else ""), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
