"""Container engines as users have them, for the checks and the tests that run containers.

Docker Engine with Compose v2 (`docker compose`) or Compose 1.x (`docker-compose`, what Debian 12
packages), else Podman with `podman compose` or `podman-compose`. What is missing is said in one
line each, and the first engine that answers *and* has a compose is used. Where no registry
is reachable, stand-in base images are built with mmdebstrap from Debian bookworm.

`python -m checks.engines containers-conf` prints the path of a Podman `containers.conf` fit for
this machine; `python -m checks.engines standin-mosquitto` builds (once) the Mosquitto stand-in
in the engine found and prints its tag. CI's testcontainers lane uses both.
"""

# The module runs real programs (the container engine and its compose) with arguments it builds itself.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STANDIN_PYTHON = "localhost/capture-bridge-standin/python:3.11-slim-bookworm"
STANDIN_MOSQUITTO = "localhost/capture-bridge-standin/eclipse-mosquitto:2"
# Compose files without a top-level `version:` (the Compose Specification) need 1.27 or later.
OLDEST_COMPOSE_V1 = (1, 27)


def note(text: str) -> None:
    """A line of explanation under the PASS/FAIL lines."""
    print(f"      {text}", flush=True)


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 900, check: bool = True,
        quiet: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with the tail of its output."""
    proc = subprocess.run(
        list(cmd), cwd=ROOT, env=env, text=True, capture_output=quiet, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-3000:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{tail}")
    return proc


def answers(cmd: Sequence[str], env: dict[str, str], timeout: float = 60) -> str | None:
    """The stripped output of `cmd` when it exits 0, else None (also when it is not installed)."""
    if not shutil.which(cmd[0]) and not Path(cmd[0]).exists():
        return None
    try:
        proc = run(cmd, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@dataclass
class Engine:
    """docker or podman, and the compose that goes with it."""

    name: str
    compose_cmd: list[str]
    version: str
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return run([self.name, *args], env=self.env, check=check, timeout=timeout)

    def inspect(self, ref: str, kind: str = "container") -> dict[str, Any]:
        data = json.loads(self("inspect", "--type", kind, ref).stdout)
        assert isinstance(data, list)
        return dict(data[0])

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, check=False).returncode == 0


def apt_install(packages: list[str], why: str) -> None:
    """Install Debian packages a check needs, where this is a Debian machine and we are root."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise SystemExit(f"{why}: install {' '.join(packages)}")
    note(f"{why}: apt-get install {' '.join(packages)}")
    run(["apt-get", "update", "-qq"], timeout=900)
    run(["apt-get", "install", "-y", "-qq", *packages], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        timeout=1800)


def compose_version(text: str) -> tuple[int, ...]:
    """`2.26.1-4`, `v2.29.7`, `1.29.2, build unknown`, `podman-compose version 1.6.0` -> (major, minor, ...)."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(part) for part in match.groups() if part is not None) if match else ()


def docker_compose(env: dict[str, str], missing: list[str]) -> tuple[list[str], str] | None:
    """Compose v2 (the plugin, or its standalone binary) first, then Compose 1.x."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        out = answers([*cmd, "version", "--short"], env)
        if out is None:
            continue
        version = compose_version(out)
        if version and version[:2] < OLDEST_COMPOSE_V1:
            missing.append(f"`{' '.join(cmd)}` is Compose {out}: the compose files need {OLDEST_COMPOSE_V1[0]}."
                           f"{OLDEST_COMPOSE_V1[1]} or later")
            continue
        return cmd, f"Compose {out}"
    missing.append("Docker answers but has no compose: neither the Compose v2 plugin (`docker compose`: the "
                   "docker-compose-plugin package, or Debian 13's docker-compose) nor Compose 1.x "
                   "(`docker-compose`: Debian 12's docker-compose) is installed")
    return None


def podman_compose(env: dict[str, str], missing: list[str]) -> tuple[list[str], str] | None:
    """`podman compose` (Podman 4.7+, which runs a compose provider), else podman-compose."""
    # On PATH, else the one `make install` puts in the virtualenv (a dev extra).
    standalone = shutil.which("podman-compose") or str(Path(sys.executable).with_name("podman-compose"))
    candidates = [["podman", "compose"], [standalone]]
    for cmd in candidates:
        out = answers([*cmd, "version"], env)
        if out is not None:
            name = " ".join([Path(cmd[0]).name, *cmd[1:]])
            return cmd, f"{name} ({out.splitlines()[0] if out else '?'})"
    missing.append("Podman answers but has no compose: neither `podman compose` (Podman 4.7+) nor "
                   "podman-compose (pip install podman-compose) is there")
    return None


def try_docker(env: dict[str, str], missing: list[str]) -> Engine | None:
    if not shutil.which("docker"):
        missing.append("docker: not installed")
        return None
    server = answers(["docker", "version", "--format", "{{.Server.Version}}"], env, timeout=30)
    if server is None:
        where = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        missing.append(f"docker: no Docker Engine answers at {where} (is dockerd running? is DOCKER_HOST right?)")
        return None
    found = docker_compose(env, missing)
    if found is None:
        return None
    return Engine("docker", found[0], f"Docker {server} + {found[1]}", env)


def try_podman(env: dict[str, str], missing: list[str]) -> Engine | None:
    if not shutil.which("podman"):
        missing.append("podman: not installed")
        return None
    if answers(["podman", "info"], env) is None:
        missing.append("podman: `podman info` fails")
        return None
    version = answers(["podman", "version", "--format", "{{.Client.Version}}"], env) or "?"
    if not podman_resolves_names(env):
        dnsname = "golang-github-containernetworking-plugin-dnsname"
        apt_install([dnsname], "Podman's CNI networks resolve no service names (the bridge could not find "
                    "`mosquitto`) without the dnsname plugin")
    found = podman_compose(env, missing)
    if found is None:
        return None
    return Engine("podman", found[0], f"Podman {version} + {found[1]}", env)


CNI_PLUGIN_DIRS = ["/usr/local/libexec/cni", "/usr/libexec/cni", "/usr/local/lib/cni", "/usr/lib/cni", "/opt/cni/bin"]


def podman_resolves_names(env: dict[str, str]) -> bool:
    """Whether containers on a compose network find each other by name: netavark (with aardvark-dns)
    does that itself; CNI, Podman 4's other backend, only with the dnsname plugin."""
    backend = answers(["podman", "info", "--format", "{{.Host.NetworkBackend}}"], env)
    return backend != "cni" or any(Path(folder, "dnsname").exists() for folder in CNI_PLUGIN_DIRS)


def find_engine(prefer: str | None = None, compose: str | None = None) -> Engine:
    """The first engine that answers and has a compose (`prefer` first, or only it when given).

    `compose` forces a compose command (e.g. `docker-compose` where Compose v2 is there too).
    Each engine that cannot be used is named, with what it lacks.
    """
    env = dict(os.environ)
    missing: list[str] = []
    order = [prefer] if prefer else ["docker", "podman"]
    if not prefer and not shutil.which("docker") and not shutil.which("podman"):
        apt_install(["podman", "runc", "uidmap", "slirp4netns"], "no container engine is installed")
    for name in order:
        engine = try_docker(env, missing) if name == "docker" else try_podman(env, missing)
        if engine is None:
            continue
        if compose:
            engine.compose_cmd = compose.split()
            out = answers([*engine.compose_cmd, "version"], env)
            if out is None:
                raise SystemExit(f"`{compose} version` fails: is it installed?")
            engine.version = f"{engine.version.split(' + ')[0]} + {compose} ({out.splitlines()[0]})"
        for line in missing:
            note(f"not used: {line}")
        return engine
    raise SystemExit("no usable container engine:\n" + "\n".join(f"  - {line}" for line in missing))


# -- Podman on this kind of machine ---------------------------------------------------------------


def podman_containers_conf() -> Path:
    """A containers.conf asking for the rlimits this machine has (Podman's defaults exceed its hard
    limits, so containers fail to start) and runc where it is installed (crun fails here)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 1 << 15)
    conf = Path(tempfile.gettempdir()) / "capture-bridge.containers.conf"
    runtime = '[engine]\nruntime = "runc"\n' if shutil.which("runc") else ""
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
                    f"{runtime}", encoding="utf-8")
    return conf


def podman_limits(engine: Engine, image: str) -> None:
    """Run a trivial container; where it fails on rlimits, use podman_containers_conf()."""
    probe = engine("run", "--rm", "--network", "none", "--entrypoint", "true", image, check=False, timeout=120)
    if probe.returncode == 0 or "rlimit" not in probe.stderr:
        return
    conf = podman_containers_conf()
    engine.env["CONTAINERS_CONF"] = str(conf)
    note(f"podman cannot start containers with its default rlimits here; using CONTAINERS_CONF={conf}")
    engine("run", "--rm", "--network", "none", "--entrypoint", "true", image, timeout=120)


# -- stand-in base images -------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (the stand-ins come from the same place)."""
    texts = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in texts:
        with contextlib.suppress(OSError):
            text = path.read_text(encoding="utf-8")
            match = re.search(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s", text, re.MULTILINE)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def build_standin(engine: Engine, tag: str, packages: list[str], hooks: list[str], changes: list[str]) -> None:
    """Debian bookworm with `packages`, imported as `tag`."""
    if not shutil.which("mmdebstrap"):
        apt_install(["mmdebstrap"], "no registry reachable and no mmdebstrap to build a stand-in")
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        run(["mmdebstrap", "--variant=apt", "--include=" + ",".join(packages),
             *(f"--customize-hook={hook}" for hook in hooks), "bookworm", str(tar), debian_mirror()], timeout=1800)
        change_args = [arg for change in changes for arg in ("--change", change)]
        engine("import", *change_args, str(tar), tag)


def python_standin(engine: Engine) -> None:
    # Like python:3.11-slim-bookworm: python3 3.11 with venv and pip. This machine reaches PyPI
    # through a TLS-inspecting proxy, so the stand-in trusts the same CA bundle the host does.
    hooks = ['cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"',
             'printf "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n" > "$1/etc/pip.conf"']
    build_standin(engine, STANDIN_PYTHON, ["python3", "python3-venv", "python3-pip", "ca-certificates"], hooks,
                  ["ENV LANG=C.UTF-8", 'CMD ["python3"]'])


def mosquitto_standin(engine: Engine) -> None:
    # Like eclipse-mosquitto:2: the broker as PID 1 reading /mosquitto/config, data in /mosquitto/data
    # owned by the mosquitto user it drops to.
    hooks = ['mkdir -p "$1/mosquitto/config" "$1/mosquitto/data" "$1/mosquitto/log"',
             'chroot "$1" chown -R mosquitto:mosquitto /mosquitto/data /mosquitto/log',
             'printf "listener 1883\\nallow_anonymous true\\n" > "$1/mosquitto/config/mosquitto.conf"']
    build_standin(engine, STANDIN_MOSQUITTO, ["mosquitto"], hooks,
                  ["EXPOSE 1883", 'CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]'])


def base_image(engine: Engine, ref: str, standin: str, build: Callable[[Engine], None], rebuild: bool) -> str:
    """`ref` when it is here or can be pulled, else the stand-in (built once, reused by later runs)."""
    if engine.has_image(ref):
        note(f"base image {ref}: here")
        return ref
    if engine("pull", ref, check=False, timeout=300).returncode == 0:
        note(f"base image {ref}: pulled")
        return ref
    if rebuild or not engine.has_image(standin):
        note(f"base image {ref}: cannot be pulled (no registry reachable); building stand-in {standin} "
             f"with mmdebstrap from Debian bookworm ({debian_mirror()})")
        started = time.monotonic()
        build(engine)
        note(f"stand-in {standin} built in {time.monotonic() - started:.0f} s")
    else:
        note(f"base image {ref}: cannot be pulled (no registry reachable); using stand-in {standin} "
             "built earlier (--rebuild-standins to refresh)")
    return standin


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["containers-conf", "standin-mosquitto"])
    parser.add_argument("--engine", choices=["docker", "podman"], help="only this engine")
    args = parser.parse_args(argv)
    if args.what == "containers-conf":
        print(podman_containers_conf())
        return 0
    # The engine's own CLI is enough here: no compose needed to import an image.
    engine = Engine(args.engine or ("docker" if shutil.which("docker") else "podman"), [], "")
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the tag alone
        # Fully qualified: Podman would take a short name for the stand-in itself (it ends the same).
        tag = base_image(engine, "docker.io/library/eclipse-mosquitto:2", STANDIN_MOSQUITTO, mosquitto_standin,
                         rebuild=False)
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
