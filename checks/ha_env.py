"""Where `make ha-check` gets Home Assistant: one cached environment per supported version (a lane).

- 2026.11.0 (today's, the default) needs Python >= 3.14.2. This machine's registries have it as
  Debian forky's python3: the first run builds a minimal forky root file system with `mmdebstrap`
  (`HA_ROOTFS`, default ~/.cache/capture-bridge/rootfs-forky) and a virtualenv inside it; HA then
  runs through `chroot`, sharing this machine's loopback (the broker, the bridge, the API).
- 2025.4.4 (the oldest supported) runs in a virtualenv on pyenv's Python 3.13.0 (`HA_PYTHON`).

Each environment is built once (minutes) and reused while its requirements are unchanged.
"""

# Builds and runs real programs (mmdebstrap, chroot, pip, Home Assistant) with arguments it makes itself.
# ruff: noqa: S603, S607

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("~/.cache/capture-bridge").expanduser()
ROOTFS = Path(os.environ.get("HA_ROOTFS", str(CACHE / "rootfs-forky"))).expanduser()
HOST_CA = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Lane:
    """One Home Assistant version and what it needs beside it.

    The requirements of the MQTT integration, the frontend (without which HA starts in recovery mode),
    the recorder (history), hassio's client (2026.x's MQTT config flow imports it) and HA's check_config
    script, from their manifest.json: installed with HA, so HA runs with --skip-pip, offline.
    """

    version: str
    requirements: tuple[str, ...]
    chroot: bool  # True: a venv inside the forky root file system; False: a venv on HA_PYTHON

    @property
    def venv(self) -> Path:
        """The virtualenv as Home Assistant sees it."""
        return Path(f"/opt/ha-{self.version}") if self.chroot else CACHE / f"ha-{self.version}"


LANES = {
    "2026.11.0": Lane("2026.11.0", (
        "homeassistant==2026.11.0", "paho-mqtt==2.1.0", "home-assistant-frontend==20261028.4",
        "aiohasupervisor==0.8.1", "colorlog==6.10.1", "SQLAlchemy==2.0.54", "fnv-hash-fast==2.0.3",
        "psutil-home-assistant==0.0.1"), chroot=True),
    "2025.4.4": Lane("2025.4.4", (
        "homeassistant==2025.4.4", "paho-mqtt==2.1.0", "home-assistant-frontend==20250411.0", "colorlog==6.8.2"),
        chroot=False),
}
DEFAULT = "2026.11.0"
OLDEST = "2025.4.4"
HA_PYTHON = os.environ.get("HA_PYTHON", "/root/.pyenv/versions/3.13.0/bin/python")


@dataclass(frozen=True)
class Runtime:
    """How to run a program of a lane and where its files are, seen from here and from Home Assistant."""

    lane: Lane
    root: Path | None  # the chroot, or None

    def command(self, program: str, *args: str) -> list[str]:
        """argv running `program` of the lane's virtualenv (bin/hass, bin/python)."""
        path = str(self.lane.venv / "bin" / program)
        return ["chroot", str(self.root), path, *args] if self.root is not None else [path, *args]

    def workdir(self, name: str) -> Path:
        """A new directory Home Assistant can see, as a path here."""
        base = self.root / "var" / "tmp" if self.root is not None else Path("/tmp")  # noqa: S108 - a private mkdir
        path = base / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def inside(self, path: Path) -> str:
        """A path here as Home Assistant sees it."""
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root))


def lane(version: str) -> Lane:
    """The lane of a version, or one line naming the known ones."""
    try:
        return LANES[version]
    except KeyError:
        raise SystemExit(f"ha-check: HA_VERSION={version} is not a lane; known: {', '.join(LANES)}") from None


def ensure(version: str) -> Runtime:
    """The lane's environment, built on first use."""
    chosen = lane(version)
    if chosen.chroot:
        _ensure_rootfs()
        runtime = Runtime(chosen, ROOTFS)
        marker = ROOTFS / chosen.venv.relative_to("/") / ".ha-check-ready"
    else:
        runtime = Runtime(chosen, None)
        marker = chosen.venv / ".ha-check-ready"
    wanted = " ".join(chosen.requirements)
    if marker.exists() and marker.read_text() == wanted:
        return runtime
    print(f"installing {wanted} into {chosen.venv}{f' in {ROOTFS}' if chosen.chroot else ''} "
          "(takes a few minutes) ...", flush=True)
    if chosen.chroot:
        _chroot_venv(chosen)
    else:
        if not Path(HA_PYTHON).exists():
            raise SystemExit(f"ha-check: {HA_PYTHON} not found: set HA_PYTHON to a Python 3.13 interpreter")
        subprocess.run([HA_PYTHON, "-m", "venv", str(chosen.venv)], check=True)
        pip = [str(chosen.venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, *chosen.requirements], check=True)
    marker.write_text(wanted)
    return runtime


def _ensure_rootfs() -> None:
    """A minimal Debian forky with python3 (3.14): the only Python >= 3.14.2 this machine's registries have."""
    if (ROOTFS / "usr" / "bin" / "python3").exists():
        return
    if shutil.which("mmdebstrap") is None:
        print("installing mmdebstrap (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "mmdebstrap"], check=True)
    partial = ROOTFS.with_name(ROOTFS.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"building {ROOTFS} with mmdebstrap (about 2.5 minutes) ...", flush=True)
    # The mirror's forky Release file can be past its Valid-Until date; it is still what forky is.
    subprocess.run(["mmdebstrap", "--variant=minbase", "--aptopt=Acquire::Check-Valid-Until \"false\"",
                    "--include=python3,python3-venv,ca-certificates", "forky", str(partial)], check=True)
    partial.rename(ROOTFS)


def _chroot_venv(chosen: Lane) -> None:
    # pip inside trusts what this machine trusts (its registry access may go through a proxy with its own CA).
    ca = ROOTFS / "etc" / "ssl" / "ha-check-ca.crt"
    shutil.copyfile(HOST_CA, ca)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CERT="/etc/ssl/ha-check-ca.crt", SSL_CERT_FILE="/etc/ssl/ha-check-ca.crt",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    root = ["chroot", str(ROOTFS)]
    subprocess.run([*root, "python3", "-m", "venv", str(chosen.venv)], check=True, env=env)
    subprocess.run([*root, str(chosen.venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    *chosen.requirements], check=True, env=env)


VALIDATE = r"""
import asyncio, importlib, json, sys
from homeassistant.core import HomeAssistant

ALWAYS_DROPPED = {"default_entity_id", "object_id"}  # 2025.4.4 knows only object_id; 2026.x drops it


async def main():
    # HA's schemas validate templates with the running instance (2026.x refuses them without one).
    HomeAssistant(sys.argv[1])
    from homeassistant.components.mqtt import schemas
    problems = []

    def check(topic, component, config):
        schema = importlib.import_module(f"homeassistant.components.mqtt.{component}").DISCOVERY_SCHEMA
        try:
            valid = schema(dict(config))
        except Exception as exc:
            problems.append(f"{topic}: {exc}")
            return
        dropped = set(config) - set(valid) - ALWAYS_DROPPED
        if dropped:
            problems.append(f"{topic}: dropped {sorted(dropped)}")

    for topic, payload in json.load(sys.stdin).items():
        data = json.loads(payload)
        if topic.split("/")[1] != "device":
            check(topic, topic.split("/")[1], data)
            continue
        try:
            schemas.DEVICE_DISCOVERY_SCHEMA(dict(data))
        except Exception as exc:
            problems.append(f"{topic}: {exc}")
            continue
        for key, component in data["components"].items():
            config = {k: v for k, v in component.items() if k != "platform"}
            config.update(device=data["device"], origin=data["origin"])
            for option in schemas.SHARED_OPTIONS:  # what HA hands each component
                if option in data and option not in config:
                    config[option] = data[option]
            check(f"{topic} {key}", component["platform"], config)
    print(json.dumps(problems))


asyncio.run(main())
"""


def validate(runtime: Runtime, configs: dict[str, bytes]) -> list[str]:
    """Each discovery payload through HA's own schemas, inside a Home Assistant instance; the problems."""
    scratch = runtime.workdir("ha-validate")
    try:
        done = subprocess.run(runtime.command("python", "-c", VALIDATE, runtime.inside(scratch)),
                              input=json.dumps({t: p.decode() for t, p in configs.items()}),
                              capture_output=True, text=True, check=False, timeout=300)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0:
        return [f"the validation script failed: {done.stderr.strip().splitlines()[-1:]}"]
    problems: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return problems
