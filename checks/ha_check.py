"""`make ha-check`: the bridge in a real Home Assistant core, checked through HA's own API.

Not part of `make test`: the first run creates a cached virtualenv with Home Assistant
(`HA_VENV`, default ~/.cache/capture-bridge/ha-2025.4.4, on `HA_PYTHON`, default pyenv's
3.13.0; 2025.4.4 is the newest release that installs on 3.13.0), which takes minutes.
Then it starts a private Mosquitto, the mock cloud, the bridge and Home Assistant, onboards
HA through its REST API, adds the MQTT integration through the config-entries flow, and
checks what a user would see. One PASS/FAIL line per check; exit status 1 on any FAIL.

    python -m checks.ha_check [--keep DIR]
"""

# A check runs real programs (Home Assistant, pip, the mock cloud and a browser) with arguments it builds itself.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bridge import __version__
from bridge.features import discovery
from tests.support.bridge_proc import BridgeProcess
from tests.support.broker import Broker, free_port
from tests.support.cloud_proc import MockCloudProcess
from tests.support.probe import Probe
from tests.support.waits import wait_until_async

HA_VERSION = "2025.4.4"
# The requirements of the MQTT integration and of the frontend (without which HA starts in recovery
# mode), from their manifest.json, and of HA's check_config script: installed with HA, so HA runs
# with --skip-pip, offline.
HA_REQUIREMENTS = [f"homeassistant=={HA_VERSION}", "paho-mqtt==2.1.0", "home-assistant-frontend==20250411.0",
                   "colorlog==6.8.2"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "home-assistant.yaml"
HA_PYTHON = os.environ.get("HA_PYTHON", "/root/.pyenv/versions/3.13.0/bin/python")
HA_VENV = Path(os.environ.get("HA_VENV", f"~/.cache/capture-bridge/ha-{HA_VERSION}")).expanduser()

OK_GUID = "a64b2e58-9305-4a01-9c51-092205123945"  # the mock cloud answers ok
OFFLINE_GUID = "de000000-0000-4000-8000-000000000002"  # the mock cloud answers 111
DEVICES = {
    "truck-12": {"guid": OK_GUID, "name": "Truck 12"},
    "van-3": {"guid": OFFLINE_GUID, "name": "Van 3"},
    "trailer-7": {"guid": OK_GUID, "name": "Trailer 7"},
}
CLIENT_ID = "capture-bridge"
USER, PASSWORD = "check", "check-password-1"
CLIENT = "http://127.0.0.1/"  # an IndieAuth client id HA accepts for the onboarding token


def camera_entities(device: str) -> dict[str, str]:
    """entity_id -> entity name, for one camera."""
    part = device.replace("-", "_")
    return {f"{e.component}.{part}_{e.key}": e.name for e in discovery.ENTITIES}


BRIDGE_ENTITIES = {f"{e.component}.capture_bridge_{e.key}": e.name for e in discovery.BRIDGE_ENTITIES}


# --- the pieces ----------------------------------------------------------------------------------


def ensure_ha_venv() -> Path:
    """The cached virtualenv with Home Assistant; created on first use."""
    hass = HA_VENV / "bin" / "hass"
    marker = HA_VENV / ".ha-check-ready"
    if hass.exists() and marker.exists() and marker.read_text() == " ".join(HA_REQUIREMENTS):
        return hass
    if not HA_VENV.exists() and not Path(HA_PYTHON).exists():
        raise SystemExit(f"ha-check: {HA_PYTHON} not found: set HA_PYTHON to a Python 3.13 interpreter")
    print(f"creating {HA_VENV} with {' '.join(HA_REQUIREMENTS)} on {HA_PYTHON} (takes a few minutes) ...",
          flush=True)
    if not HA_VENV.exists():
        subprocess.run([HA_PYTHON, "-m", "venv", str(HA_VENV)], check=True)
    pip = [str(HA_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *HA_REQUIREMENTS], check=True)
    marker.write_text(" ".join(HA_REQUIREMENTS))
    return hass


class HomeAssistant:
    """A Home Assistant core process with its own configuration directory and port."""

    def __init__(self, hass: Path, workdir: Path) -> None:
        self.hass = hass
        self.config_dir = workdir / "ha-config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "home-assistant.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        (self.config_dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: ha-check\n  time_zone: UTC\n  unit_system: metric\n"
            "  latitude: 0\n  longitude: 0\n  elevation: 0\n  country: DE\n  currency: EUR\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nwebsocket_api:\n"
            "logger:\n  default: warning\n"
        )

    def start(self) -> None:
        """Start (returns at once)."""
        self._out = (self.log_path.parent / "hass.stdout").open("ab")
        self.proc = subprocess.Popen(
            [str(self.hass), "-c", str(self.config_dir), "--log-file", str(self.log_path), "--skip-pip"],
            stdout=self._out, stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 90 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()

    async def wait_up(self, session: aiohttp.ClientSession, seconds: float = 180) -> None:
        """Until the HTTP API answers."""
        async def answers() -> bool:
            try:
                async with session.get(f"{self.url}/api/onboarding") as response:
                    return response.status in (200, 401)
            except aiohttp.ClientError:
                return False
        await until(answers, seconds, "Home Assistant's HTTP API answers")

    async def onboard(self, session: aiohttp.ClientSession) -> None:
        """Create the owner through the onboarding API and get an access token."""
        body = {"client_id": CLIENT, "name": "Check", "username": USER, "password": PASSWORD, "language": "en"}
        async with session.post(f"{self.url}/api/onboarding/users", json=body) as response:
            response.raise_for_status()
            code = (await response.json())["auth_code"]
        form = {"grant_type": "authorization_code", "code": code, "client_id": CLIENT}
        async with session.post(f"{self.url}/auth/token", data=form) as response:
            response.raise_for_status()
            self.token = (await response.json())["access_token"]
        # The remaining steps only matter to the frontend's onboarding screens (see finish_onboarding).
        for step in ("core_config", "analytics"):
            async with session.post(f"{self.url}/api/onboarding/{step}", headers=self.auth):
                pass

    async def finish_onboarding(self, session: aiohttp.ClientSession) -> None:
        """The last onboarding step, for the frontend. Only before the screenshot: in this offline
        sandbox a fully onboarded HA 2025.4.4 never finished its next start-up ("Waiting for
        startup to wrap up"), which the restart check would trip over."""
        data = {"client_id": CLIENT, "redirect_uri": f"{CLIENT}?auth_callback=1"}
        async with session.post(f"{self.url}/api/onboarding/integration", json=data, headers=self.auth):
            pass

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.token}"}

    async def add_mqtt(self, session: aiohttp.ClientSession, broker_port: int) -> dict[str, Any]:
        """The MQTT integration through the config-entries flow, as the UI does it."""
        async with session.post(f"{self.url}/api/config/config_entries/flow", headers=self.auth,
                                json={"handler": "mqtt", "show_advanced_options": False}) as response:
            response.raise_for_status()
            form = await response.json()
        assert form["step_id"] == "broker", form
        async with session.post(f"{self.url}/api/config/config_entries/flow/{form['flow_id']}", headers=self.auth,
                                json={"broker": "127.0.0.1", "port": broker_port}) as response:
            response.raise_for_status()
            result: dict[str, Any] = await response.json()
        return result


class Socket:
    """HA's websocket API: commands, and every state_changed event kept in `changes`."""

    def __init__(self, ha: HomeAssistant, session: aiohttp.ClientSession) -> None:
        self.ha = ha
        self.session = session
        self.changes: list[dict[str, Any]] = []
        self._id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> None:
        """Connect, authenticate, subscribe to state changes."""
        self._ws = await self.session.ws_connect(f"{self.ha.url}/api/websocket")
        assert (await self._ws.receive_json())["type"] == "auth_required"
        await self._ws.send_json({"type": "auth", "access_token": self.ha.token})
        assert (await self._ws.receive_json())["type"] == "auth_ok"
        self._reader = asyncio.create_task(self._read())
        await self.call("subscribe_events", event_type="state_changed")

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            data = message.json()
            if data.get("type") == "event":
                self.changes.append(data["event"]["data"])
            elif data.get("id") in self._waiting:
                future = self._waiting.pop(data["id"])
                if data.get("success", True):
                    future.set_result(data.get("result"))
                else:
                    future.set_exception(RuntimeError(json.dumps(data.get("error"))))

    async def call(self, command: str, **fields: Any) -> Any:
        """One websocket command; its result."""
        assert self._ws is not None
        self._id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._id] = future
        await self._ws.send_json({"id": self._id, "type": command, **fields})
        return await asyncio.wait_for(future, 30)

    async def states(self) -> dict[str, dict[str, Any]]:
        """entity_id -> state object."""
        return {s["entity_id"]: s for s in await self.call("get_states")}

    async def service(self, domain: str, service: str, entity_id: str, **data: Any) -> None:
        """Call a service on one entity."""
        await self.call("call_service", domain=domain, service=service, target={"entity_id": entity_id},
                        service_data=data)

    def changes_of(self, entity_id: str, since: int = 0) -> list[dict[str, Any]]:
        """The new states an entity went through (since change number `since`)."""
        return [c["new_state"] for c in self.changes[since:] if c["entity_id"] == entity_id and c["new_state"]]

    async def close(self) -> None:
        """Close the socket."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# Polling HA's API four times a second, with a deadline.
until = functools.partial(wait_until_async, interval=0.25)


# --- the checks ------------------------------------------------------------------------------------


class Report:
    """PASS/FAIL lines."""

    def __init__(self) -> None:
        self.failed = 0

    def line(self, ok: bool, name: str, detail: str = "") -> bool:
        """Print one result."""
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok

    async def check(self, name: str, check: Callable[[], Awaitable[str]]) -> bool:
        """Run one check: it returns a detail, or raises (AssertionError/TimeoutError) to fail."""
        try:
            detail = await check()
        except (AssertionError, TimeoutError, RuntimeError, KeyError) as exc:
            return self.line(False, name, f"{type(exc).__name__}: {exc}"[:500])
        return self.line(True, name, detail)


def check_example(workdir: Path) -> list[str]:
    """examples/home-assistant.yaml through HA's check_config; the problems it reports."""
    config_dir = workdir / "example-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(
        "homeassistant:\n  name: example\n  time_zone: UTC\nmqtt:\n" + EXAMPLE.read_text()
    )
    done = subprocess.run([str(HA_VENV / "bin" / "hass"), "--script", "check_config", "-c", str(config_dir)],
                          capture_output=True, text=True, timeout=300, check=False)
    output = done.stdout + done.stderr
    # Automations and scripts with errors are reported as ERROR lines, not by the exit status.
    problems = [line for line in output.splitlines() if line.startswith("ERROR") or "Invalid config" in line]
    if done.returncode != 0:
        problems.append(f"check_config exited {done.returncode}")
    return problems


def validate_with_ha(configs: dict[str, bytes]) -> list[str]:
    """Each discovery payload through HA's own DISCOVERY_SCHEMA; problems (a refused or dropped key)."""
    script = r"""
import importlib, json, sys
from homeassistant.helpers import frame
# Outside a running HA, cv.template reports "template without hass"; HA attaches hass later.
frame.report_usage = lambda *args, **kwargs: None
problems = []
for topic, payload in json.load(sys.stdin).items():
    component = topic.split("/")[1]
    schema = importlib.import_module(f"homeassistant.components.mqtt.{component}").DISCOVERY_SCHEMA
    data = json.loads(payload)
    try:
        valid = schema(dict(data))
    except Exception as exc:
        problems.append(f"{topic}: {exc}")
        continue
    # default_entity_id is the key that replaces object_id from HA 2025.10 on.
    dropped = set(data) - set(valid) - {"default_entity_id"}
    if dropped:
        problems.append(f"{topic}: dropped {sorted(dropped)}")
print(json.dumps(problems))
"""
    python = HA_VENV / "bin" / "python"
    done = subprocess.run([str(python), "-c", script], input=json.dumps({t: p.decode() for t, p in configs.items()}),
                          capture_output=True, text=True, check=True)
    problems: list[str] = json.loads(done.stdout)
    return problems


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


async def take_screenshot(ha: HomeAssistant, ws: Socket, session: aiohttp.ClientSession, path: Path) -> None:
    """Truck 12's device page in HA's frontend, through headless Chromium's DevTools protocol.

    The frontend keeps its tokens in localStorage (`hassTokens`): we put ours there, then open the page.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshot skipped: no chromium (apt-get install chromium)", flush=True)
        return
    await ha.finish_onboarding(session)
    devices = await ws.call("config/device_registry/list")
    device_id = next(d["id"] for d in devices if d["name"] == "Truck 12")
    port = free_port()
    browser = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited
        [chromium, *CHROMIUM_FLAGS, "--window-size=1200,1500", f"--remote-debugging-port={port}",
         f"--user-data-dir={ha.config_dir.parent / 'chromium-profile'}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await until(lambda: _answers(session, f"http://127.0.0.1:{port}/json"), 30, "Chromium's DevTools answer")
        async with session.get(f"http://127.0.0.1:{port}/json") as response:
            page = next(t for t in await response.json() if t["type"] == "page")
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as devtools:
            calls = 0

            async def send(method: str, **params: Any) -> Any:
                nonlocal calls
                calls += 1
                await devtools.send_json({"id": calls, "method": method, "params": params})
                async for message in devtools:
                    data = message.json()
                    if data.get("id") == calls:
                        return data.get("result")
                raise RuntimeError("DevTools closed")

            tokens = {"hassUrl": ha.url, "clientId": CLIENT, "access_token": ha.token, "refresh_token": "",
                      "token_type": "Bearer", "expires_in": 1800, "expires": int(time.time() * 1000) + 1_500_000}
            await send("Page.navigate", url=f"{ha.url}/manifest.json")
            await asyncio.sleep(1)  # ok: the same-origin page loads before its localStorage is written
            stored = json.dumps(json.dumps(tokens))
            await send("Runtime.evaluate", expression=f"localStorage.setItem('hassTokens', {stored})")
            await send("Page.navigate", url=f"{ha.url}/config/devices/device/{device_id}")
            await asyncio.sleep(10)  # ok: the frontend renders its cards (no load event marks that)
            shot = await send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        print(f"screenshot: {path}", flush=True)
    finally:
        browser.terminate()
        browser.wait(10)


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def run_checks(workdir: Path, screenshot: Path | None = None) -> int:
    """The whole scenario; returns the number of failed checks."""
    report = Report()
    hass = ensure_ha_venv()
    broker = Broker(workdir / "broker").start()
    cloud = MockCloudProcess(workdir, "--latency", "1")  # 1 s: a running capture is visible
    bridge_config: dict[str, Any] = {
        "mqtt": {"url": broker.url, "client_id": CLIENT_ID, "base_topic": "fleet", "reconnect_min": 0.2,
                 "reconnect_max": 1.0},
        "cloud": {"base_url": cloud.url, "token": "ha-check"},
        "devices": DEVICES,
        "bridge": {"journal_path": str(workdir / "journal.sqlite"), "shutdown_timeout": 5},
        "homeassistant": {"enabled": True},
    }
    bridges: list[BridgeProcess] = []

    def start_bridge(devices: dict[str, Any]) -> BridgeProcess:
        proc = BridgeProcess(workdir / f"bridge{len(bridges)}", {**bridge_config, "devices": devices}).start()
        bridges.append(proc)
        return proc

    probe = Probe(broker.port)
    ha = HomeAssistant(hass, workdir)
    all_devices = list(DEVICES)
    expected = {**BRIDGE_ENTITIES}
    for device in all_devices:
        expected.update(camera_entities(device))
    try:
        bridge = start_bridge(DEVICES)
        probe.subscribe("homeassistant/+/capture_bridge/+/config")
        configs_seen = probe.wait_for(lambda m: m.topic.endswith("/config") and bool(m.payload),
                                      count=len(expected), timeout=30)
        configs = {m.topic: m.payload for m in configs_seen}

        async def schemas() -> str:
            problems = await asyncio.to_thread(validate_with_ha, configs)
            assert not problems, "; ".join(problems[:5])
            return f"{len(configs)} payloads, HA {HA_VERSION} keeps every key"
        await report.check("discovery payloads pass HA's own MQTT schemas", schemas)

        async def example() -> str:
            problems = await asyncio.to_thread(check_example, workdir)
            assert not problems, "; ".join(problems[:3])
            return "its automations and scripts load without errors"
        await report.check("examples/home-assistant.yaml passes HA's check_config", example)

        ha.start()
        async with aiohttp.ClientSession() as session:
            await ha.wait_up(session)
            await ha.onboard(session)
            entry = await ha.add_mqtt(session, broker.port)
            report.line(entry.get("type") == "create_entry", "MQTT integration added through the config flow",
                        str(entry.get("title")))
            ws = Socket(ha, session)
            await ws.connect()

            async def all_entities_available() -> bool:
                states = await ws.states()
                return all(states.get(e, {}).get("state", "unavailable") != "unavailable" for e in expected)

            async def entities_and_devices() -> str:
                await until(all_entities_available, 60, "every entity exists and is available")
                states = await ws.states()
                registry = {e["entity_id"]: e for e in await ws.call("config/entity_registry/list")}
                devices = {d["id"]: d for d in await ws.call("config/device_registry/list")}
                bridge_devices = [d for d in devices.values() if d["name"] == "capture-bridge"]
                assert len(bridge_devices) == 1, bridge_devices
                bridge_device = bridge_devices[0]
                assert bridge_device["sw_version"] == __version__, bridge_device
                for entity_id, name in BRIDGE_ENTITIES.items():
                    assert registry[entity_id]["device_id"] == bridge_device["id"], entity_id
                    assert states[entity_id]["attributes"]["friendly_name"] == f"capture-bridge {name}", entity_id
                for device, info in DEVICES.items():
                    device_ids = {registry[e]["device_id"] for e in camera_entities(device)}
                    assert len(device_ids) == 1, (device, device_ids)
                    camera = devices[device_ids.pop()]
                    assert camera["name"] == info["name"], camera
                    assert camera["via_device_id"] == bridge_device["id"], camera
                    assert camera["serial_number"] == info["guid"], camera
                    assert camera["manufacturer"] == discovery.MANUFACTURER, camera
                    assert camera["sw_version"] is None, camera
                    for entity_id, name in camera_entities(device).items():
                        friendly = states[entity_id]["attributes"]["friendly_name"]
                        assert friendly == f"{info['name']} {name}", (entity_id, friendly)
                return (f"{len(expected)} entities: {len(BRIDGE_ENTITIES)} on capture-bridge, "
                        f"{len(discovery.ENTITIES)} on each of {len(DEVICES)} cameras via it; all available")
            await report.check("every entity exists with its name, device and availability", entities_and_devices)

            async def bridge_device_state() -> str:
                states = await ws.states()
                assert states["binary_sensor.capture_bridge_connection"]["state"] == "on"
                assert states["sensor.capture_bridge_version"]["state"] == __version__
                assert states["sensor.capture_bridge_in_flight"]["state"] == "0"
                assert states["sensor.capture_bridge_backlog"]["state"] == "0"
                settings = states["select.truck_12_resolution"]["state"]
                assert settings == "720p", settings
                return f"connection on, version {__version__}, 0 in flight, 0 waiting; Resolution shows 720p"
            await report.check("bridge device shows connection, version, in flight and backlog", bridge_device_state)

            async def settings_shape_the_capture() -> str:
                await ws.service("select", "select_option", "select.truck_12_resolution", option="1080p")
                await ws.service("number", "set_value", "number.truck_12_photo_count", value=3)
                await ws.service("number", "set_value", "number.truck_12_interval", value=2)

                async def shown() -> bool:
                    s = await ws.states()
                    return bool(s["select.truck_12_resolution"]["state"] == "1080p"
                            and _number(s["number.truck_12_photo_count"]) == 3
                            and _number(s["number.truck_12_interval"]) == 2)
                await until(shown, 15, "HA shows the new settings")
                before = (await ws.states())["sensor.truck_12_last_capture_at"]["state"]
                mark = len(ws.changes)
                await ws.service("button", "press", "button.truck_12_capture")

                async def answered() -> bool:
                    s = await ws.states()
                    return bool(s["sensor.truck_12_last_capture"]["state"] == "ok"
                                and s["sensor.truck_12_last_capture_at"]["state"] != before)
                await until(answered, 20, "Last capture is ok again with a new time")
                request = (await ws.states())["sensor.truck_12_last_capture"]["attributes"]["request"]
                assert (request["FResolution"], request["FCount"], request["FInterval"]) == (3, 3, 2), request
                statuses = [s["state"] for s in ws.changes_of("sensor.truck_12_last_capture", mark)]
                assert statuses == ["pending", "ok"], statuses
                sent = json.dumps(request, separators=(",", ":"))
                return f"request {sent}; Last capture went {' -> '.join(statuses)}"
            await report.check("changing a select and numbers in HA changes the next capture's request",
                               settings_shape_the_capture)

            async def press_moves_sensors_and_fires_once() -> str:
                mark = len(ws.changes)
                await ws.service("button", "press", "button.truck_12_take_photo")
                await until(lambda: _final(ws, "sensor.truck_12_last_capture", mark), 20, "Take photo answered")
                # A barrier: another device's whole capture; the truck's event had time to fire twice.
                await ws.service("button", "press", "button.van_3_capture")
                await until(lambda: _final(ws, "sensor.van_3_last_capture", mark), 20, "Van 3 answered")
                s = await ws.states()
                attributes = s["sensor.truck_12_last_capture"]["attributes"]
                fired = ws.changes_of("event.truck_12_capture_event", mark)
                assert len(fired) == 1, fired
                event = fired[0]["attributes"]
                assert event["event_type"] == "ok", event
                assert (event["file_id"], event["request_id"]) == (attributes["file_id"], None), event
                assert s["sensor.truck_12_last_file"]["state"] == attributes["file_id"]
                at = s["sensor.truck_12_last_capture_at"]["state"]
                assert at.startswith(attributes["timestamp"][:19]), (at, attributes["timestamp"])
                van_events = ws.changes_of("event.van_3_capture_event", mark)
                assert [e["attributes"]["event_type"] for e in van_events] == ["error"], van_events
                assert van_events[0]["attributes"]["error"] == "device_offline"
                return f"file {attributes['file_id']} at {at}; one 'ok' event, one 'error' event for Van 3"
            await report.check("pressing a button moves the sensors and fires the event once",
                               press_moves_sensors_and_fires_once)

            async def camera_online() -> str:
                s = await ws.states()
                online = tuple(s[f"binary_sensor.{d}_camera_online"]["state"] for d in ("truck_12", "van_3",
                                                                                          "trailer_7"))
                assert online == ("on", "off", "unknown"), online
                return "Truck 12 on (ok), Van 3 off (111), Trailer 7 unknown (no answer yet)"
            await report.check("Camera online follows the last cloud answer", camera_online)

            async def bridge_stops() -> str:
                bridge.stop()

                async def down() -> bool:
                    s = await ws.states()
                    others = [e for e in expected if e != "binary_sensor.capture_bridge_connection"]
                    return (s["binary_sensor.capture_bridge_connection"]["state"] == "off"
                            and all(s[e]["state"] == "unavailable" for e in others))
                await until(down, 20, "everything unavailable, connection off")
                return f"{len(expected) - 1} entities unavailable, capture-bridge connection off"
            await report.check("stopping the bridge makes everything unavailable and the connection off", bridge_stops)

            async def bridge_returns() -> str:
                start_bridge(DEVICES)
                await until(all_entities_available, 30, "everything available again")
                s = await ws.states()
                assert s["binary_sensor.capture_bridge_connection"]["state"] == "on"
                assert s["select.truck_12_resolution"]["state"] == "1080p"
                return "all available, settings kept (Resolution 1080p)"
            await report.check("starting the bridge again brings everything back", bridge_returns)

            async def ha_restarts() -> str:
                last_file = (await ws.states())["sensor.truck_12_last_file"]["state"]
                await ws.close()
                ha.stop()
                ha.start()
                await ha.wait_up(session)
                await ws.connect()
                await until(all_entities_available, 90, "every entity back after HA's restart")
                s = await ws.states()
                kept = {e: s[e]["state"] for e in ("select.truck_12_resolution", "sensor.truck_12_last_capture",
                                                   "sensor.truck_12_last_file", "binary_sensor.van_3_camera_online")}
                assert kept == {"select.truck_12_resolution": "1080p", "sensor.truck_12_last_capture": "ok",
                                "sensor.truck_12_last_file": last_file,
                                "binary_sensor.van_3_camera_online": "off"}, kept
                return f"{len(expected)} entities available; settings, Last capture, Last file, Camera online kept"
            await report.check("restarting Home Assistant brings everything back", ha_restarts)

            async def removed_device() -> str:
                kept = {k: v for k, v in DEVICES.items() if k != "trailer-7"}
                bridges[-1].stop()
                start_bridge(kept)

                async def gone() -> bool:
                    registry = await ws.call("config/entity_registry/list")
                    return not any(e["entity_id"].startswith(("button.trailer_7", "sensor.trailer_7"))
                                   for e in registry)
                await until(gone, 30, "Trailer 7's entities removed")
                devices = await ws.call("config/device_registry/list")
                assert not [d for d in devices if d["name"] == "Trailer 7"], "Trailer 7's device is still there"
                registry = await ws.call("config/entity_registry/list")
                left = [e["entity_id"] for e in registry if "trailer_7" in e["entity_id"]]
                assert not left, left
                await until(_available(ws, kept), 30, "the others available")
                return "its 14 entities and its device are gone; Truck 12 and Van 3 stay"
            await report.check("a device removed from the config disappears from HA", removed_device)

            if screenshot is not None:
                await take_screenshot(ha, ws, session, screenshot)
            await ws.close()

        warnings = [line for line in ha.log_path.read_text(errors="replace").splitlines()
                    if ("WARNING" in line or "ERROR" in line) and "mqtt" in line]
        report.line(not warnings, "no MQTT warnings or errors in Home Assistant's log",
                    f"{len(warnings)} line(s): {warnings[:3]}" if warnings else "")
    except Exception as exc:  # a broken setup step is one more FAIL, with what happened
        report.line(False, "the scenario ran to its end", f"{type(exc).__name__}: {exc}"[:500])
    finally:
        probe.close()
        ha.stop()
        for proc in bridges:
            with contextlib.suppress(Exception):
                proc.stop()
        cloud.stop()
        broker.stop()
    return report.failed


async def _final(ws: Socket, entity_id: str, since: int) -> bool:
    return any(s["state"] in ("ok", "busy", "error") for s in ws.changes_of(entity_id, since))


def _number(state: dict[str, Any]) -> float | None:
    try:
        return float(state["state"])
    except ValueError:
        return None


def _available(ws: Socket, devices: dict[str, Any]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        states = await ws.states()
        wanted = [e for d in devices for e in camera_entities(d)]
        return all(states.get(e, {}).get("state", "unavailable") != "unavailable" for e in wanted)
    return check


def main() -> None:
    """Entry point of `make ha-check`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, HA config)")
    parser.add_argument("--screenshot", type=Path, help="also save Truck 12's device page (headless Chromium)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ha-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failed = asyncio.run(run_checks(workdir, args.screenshot))
    print(f"{'FAILED' if failed else 'OK'}: {failed} failed check(s) in {time.monotonic() - started:.0f}s; "
          f"logs in {workdir}" if failed or args.keep else
          f"OK: every check passed in {time.monotonic() - started:.0f}s", flush=True)
    if not failed and args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
