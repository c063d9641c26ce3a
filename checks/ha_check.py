"""`make ha-check`: the bridge in a real Home Assistant core, checked through HA's own API.

Not part of `make test`. Runs on one lane (checks/ha_env.py): Home Assistant 2026.11.0 by default,
2025.4.4 (the oldest supported) with `--ha-version 2025.4.4`; the first run of a lane builds its
cached environment (minutes). Then it starts a private Mosquitto, the mock cloud, the bridge and Home
Assistant, onboards HA through its REST API, adds the MQTT integration through the config-entries
flow, and checks what a user would see: an install announced per entity first, migrated to
device-based discovery with its entity ids and history kept, then every entity, the settings, the
buttons, the blueprint, restarts and a removed device. One PASS/FAIL line per check; exit status 1
on any FAIL.

    python -m checks.ha_check [--ha-version V] [--keep DIR] [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bridge import __version__
from bridge.config import Config
from bridge.features import device_discovery, discovery
from checks import ha_env
from checks.ha_api import HomeAssistant, Socket, check_example, take_screenshot, until
from checks.ha_blueprint import check_blueprint
from checks.ha_env import Runtime
from checks.report import Report
from tests.support.bridge_proc import BridgeProcess
from tests.support.broker import Broker
from tests.support.cloud_proc import MockCloudProcess
from tests.support.probe import Probe

OK_GUID = "a64b2e58-9305-4a01-9c51-092205123945"  # the mock cloud answers ok
OFFLINE_GUID = "de000000-0000-4000-8000-000000000002"  # the mock cloud answers 111
DEVICES = {
    "truck-12": {"guid": OK_GUID, "name": "Truck 12"},
    "van-3": {"guid": OFFLINE_GUID, "name": "Van 3"},
    "trailer-7": {"guid": OK_GUID, "name": "Trailer 7"},
}
CLIENT_ID = "capture-bridge"


def camera_entities(device: str) -> dict[str, str]:
    """entity_id -> entity name, for one camera."""
    part = device.replace("-", "_")
    return {f"{e.component}.{part}_{e.key}": e.name for e in discovery.ENTITIES}


BRIDGE_ENTITIES = {f"{e.component}.capture_bridge_{e.key}": e.name for e in discovery.BRIDGE_ENTITIES}
EXPECTED = {**BRIDGE_ENTITIES, **{e: n for d in DEVICES for e, n in camera_entities(d).items()}}


class Scenario:
    """The processes of one run and the checks, in the order a user meets them."""

    def __init__(self, workdir: Path, runtime: Runtime, report: Report) -> None:
        self.workdir = workdir
        self.runtime = runtime
        self.report = report
        self.broker = Broker(workdir / "broker").start()
        self.cloud = MockCloudProcess(workdir, "--latency", "1")  # 1 s: a running capture is visible
        self.bridge_config: dict[str, Any] = {
            "mqtt": {"url": self.broker.url, "client_id": CLIENT_ID, "base_topic": "fleet", "reconnect_min": 0.2,
                     "reconnect_max": 1.0},
            "cloud": {"base_url": self.cloud.url, "token": "ha-check"},
            "devices": DEVICES,
            "bridge": {"journal_path": str(workdir / "journal.sqlite"), "shutdown_timeout": 5},
            "homeassistant": {"enabled": True, "discovery": "device"},
        }
        self.bridges: list[BridgeProcess] = []
        self.probe = Probe(self.broker.port)
        self.ha = HomeAssistant(runtime)
        self.ws: Socket

    def start_bridge(self, devices: dict[str, Any], mode: str = "device") -> BridgeProcess:
        """One more bridge process (the previous one stopped)."""
        config = {**self.bridge_config, "devices": devices, "homeassistant": {"enabled": True, "discovery": mode}}
        proc = BridgeProcess(self.workdir / f"bridge{len(self.bridges)}", config).start()
        self.bridges.append(proc)
        return proc

    def close(self) -> None:
        """Stop everything."""
        self.probe.close()
        self.ha.stop()
        for proc in self.bridges:
            with contextlib.suppress(Exception):
                proc.stop()
        self.cloud.stop()
        self.broker.stop()
        shutil.rmtree(self.ha.config_dir, ignore_errors=True)

    async def check(self, name: str, check: Callable[[], Awaitable[str]]) -> bool:
        """Run one check (see Report.check)."""
        return await self.report.arun(name, check)

    # --- before Home Assistant ---------------------------------------------------------------------

    async def schemas(self) -> str:
        """Both modes' payloads for this config, inside HA: accepted, no key dropped."""
        config = Config.model_validate(self.bridge_config)
        payloads = dict(device_discovery.device_messages(config)) | dict(discovery.discovery_messages(config))
        problems = await asyncio.to_thread(ha_env.validate, self.runtime, payloads)
        assert not problems, "; ".join(problems[:5])
        return (f"{len(device_discovery.device_messages(config))} device configs and "
                f"{len(discovery.discovery_messages(config))} per-entity configs; HA {self.runtime.lane.version} "
                "keeps every key")

    async def example(self) -> str:
        """examples/home-assistant.yaml loads."""
        problems = await asyncio.to_thread(check_example, self.runtime)
        assert not problems, "; ".join(problems[:3])
        return "its automations and scripts load without errors"

    # --- an existing per-entity install, migrated ---------------------------------------------------

    async def all_entities_available(self) -> bool:
        """Every expected entity exists and is available."""
        states = await self.ws.states()
        return all(states.get(e, {}).get("state", "unavailable") != "unavailable" for e in EXPECTED)

    async def per_entity_install(self) -> str:
        """The bridge as it announced before device discovery; one capture recorded in HA's history."""
        await until(self.all_entities_available, 60, "every entity of the per-entity install is available")
        await self.ws.service("button", "press", "button.truck_12_capture")

        async def recorded() -> bool:
            return "ok" in await self.ws.history("sensor.truck_12_last_capture", self.started_at)
        await until(recorded, 30, "Last capture 'ok' in the recorder's history")
        self.before = await self._registry()
        return f"{len(EXPECTED)} entities from {4 + 14 * len(DEVICES)} per-entity configs; Last capture ok recorded"

    async def migration(self) -> str:
        """The same bridge in device mode: HA keeps every entity, its id, registry entry and history."""
        self.migrated_at = datetime.now(UTC).isoformat()
        mark = len(self.ws.registry_changes)
        self.bridges[-1].stop()
        self.start_bridge(DEVICES, "device")

        async def moved() -> bool:
            # The old topics are cleared last: until then HA still shows the entities from them.
            retained = await asyncio.to_thread(self._retained)
            if any(f"/{discovery.NODE_ID}/" in topic for topic in retained):
                return False
            return await self.all_entities_available() and await self._registry() == self.before
        await until(moved, 60, "the migration over (old topics cleared), every entity back with the same "
                    "registry entry")
        # Moved, not removed and made again (which HA's deleted-entity memory would also give the same ids).
        removed = [c["entity_id"] for c in self.ws.registry_changes[mark:] if c["action"] == "remove"]
        assert not removed, f"removed from HA's registry on the way: {removed}"
        registry = await self.ws.call("config/entity_registry/list")
        ours = [e for e in registry if str(e.get("unique_id", "")).startswith(discovery.NODE_ID)]
        assert len(ours) == len(EXPECTED), sorted(e["entity_id"] for e in ours)  # no `_2` duplicates
        history = await self.ws.history("sensor.truck_12_last_capture", self.started_at, self.migrated_at)
        assert "ok" in history, history  # recorded before the migration, still there after it
        retained = await asyncio.to_thread(self._retained)
        per_entity = [t for t in retained if f"/{discovery.NODE_ID}/" in t]
        assert not per_entity, per_entity
        assert all(b"migrate_discovery" not in p for p in retained.values()), "a migrate request stayed retained"
        assert len(retained) == 1 + len(DEVICES), sorted(retained)
        return (f"{len(EXPECTED)} entities keep their entity ids and registry entries, never removed; the history of "
                f"sensor.truck_12_last_capture before the migration {history} is kept; the broker keeps "
                f"{len(retained)} device configs and no per-entity or migrate message")

    async def _registry(self) -> dict[str, tuple[str, str]]:
        registry = await self.ws.call("config/entity_registry/list")
        return {e["entity_id"]: (e["id"], e["unique_id"]) for e in registry if e["entity_id"] in EXPECTED}

    def _retained(self) -> dict[str, bytes]:
        """What the broker keeps under the discovery prefix (a fresh client only gets retained copies)."""
        fresh = Probe(self.broker.port)
        try:
            fresh.subscribe("homeassistant/#")
            # The broker sends the retained copies right after the SUBACK: a marker sent after them closes the list.
            fresh.subscribe("ha-check/marker")
            fresh.publish("ha-check/marker", b"1")
            fresh.wait_for(lambda m: m.topic == "ha-check/marker")
            return {m.topic: m.payload for m in fresh.messages if m.retain and m.topic.startswith("homeassistant/")}
        finally:
            fresh.close()

    # --- what a user sees -------------------------------------------------------------------------

    async def entities_and_devices(self) -> str:
        """Names, devices, via_device, serial numbers."""
        await until(self.all_entities_available, 60, "every entity exists and is available")
        states = await self.ws.states()
        registry = {e["entity_id"]: e for e in await self.ws.call("config/entity_registry/list")}
        devices = {d["id"]: d for d in await self.ws.call("config/device_registry/list")}
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
            assert info["guid"] in str(camera["serial_number"]), camera  # "<terminal> (<guid>)" once known
            assert camera["manufacturer"] == discovery.MANUFACTURER, camera
            assert camera["sw_version"] is None, camera
            for entity_id, name in camera_entities(device).items():
                friendly = states[entity_id]["attributes"]["friendly_name"]
                assert friendly == f"{info['name']} {name}", (entity_id, friendly)
        return (f"{len(EXPECTED)} entities: {len(BRIDGE_ENTITIES)} on capture-bridge, "
                f"{len(discovery.ENTITIES)} on each of {len(DEVICES)} cameras via it; all available")

    async def bridge_device_state(self) -> str:
        """The bridge device's entities."""
        states = await self.ws.states()
        assert states["binary_sensor.capture_bridge_connection"]["state"] == "on"
        assert states["sensor.capture_bridge_version"]["state"] == __version__
        assert states["sensor.capture_bridge_in_flight"]["state"] == "0"
        assert states["sensor.capture_bridge_backlog"]["state"] == "0"
        settings = states["select.truck_12_resolution"]["state"]
        assert settings == "720p", settings
        return f"connection on, version {__version__}, 0 in flight, 0 waiting; Resolution shows 720p"

    async def settings_shape_the_capture(self) -> str:
        """Selects and numbers set the device's settings; the next capture uses them."""
        ws = self.ws
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

    async def press_moves_sensors_and_fires_once(self) -> str:
        """A button press: sensors move, the event fires once."""
        ws = self.ws
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

    async def camera_online(self) -> str:
        """Camera online from the last cloud answer."""
        s = await self.ws.states()
        online = tuple(s[f"binary_sensor.{d}_camera_online"]["state"] for d in ("truck_12", "van_3", "trailer_7"))
        assert online == ("on", "off", "unknown"), online
        return "Truck 12 on (ok), Van 3 off (111), Trailer 7 unknown (no answer yet)"

    async def bridge_stops(self) -> str:
        """Everything unavailable but the connection, which is off."""
        self.bridges[-1].stop()

        async def down() -> bool:
            s = await self.ws.states()
            others = [e for e in EXPECTED if e != "binary_sensor.capture_bridge_connection"]
            return (s["binary_sensor.capture_bridge_connection"]["state"] == "off"
                    and all(s[e]["state"] == "unavailable" for e in others))
        await until(down, 20, "everything unavailable, connection off")
        return f"{len(EXPECTED) - 1} entities unavailable, capture-bridge connection off"

    async def bridge_returns(self) -> str:
        """Back, settings kept."""
        self.start_bridge(DEVICES)
        await until(self.all_entities_available, 30, "everything available again")
        s = await self.ws.states()
        assert s["binary_sensor.capture_bridge_connection"]["state"] == "on"
        assert s["select.truck_12_resolution"]["state"] == "1080p"
        return "all available, settings kept (Resolution 1080p)"

    async def ha_restarts(self, session: aiohttp.ClientSession) -> str:
        """HA restarted: everything back with its state."""
        last_file = (await self.ws.states())["sensor.truck_12_last_file"]["state"]
        await self.ws.close()
        self.ha.stop()
        self.ha.start()
        await self.ha.wait_up(session)
        await self.ws.connect()
        await until(self.all_entities_available, 90, "every entity back after HA's restart")
        s = await self.ws.states()
        kept = {e: s[e]["state"] for e in ("select.truck_12_resolution", "sensor.truck_12_last_capture",
                                           "sensor.truck_12_last_file", "binary_sensor.van_3_camera_online")}
        assert kept == {"select.truck_12_resolution": "1080p", "sensor.truck_12_last_capture": "ok",
                        "sensor.truck_12_last_file": last_file, "binary_sensor.van_3_camera_online": "off"}, kept
        return f"{len(EXPECTED)} entities available; settings, Last capture, Last file, Camera online kept"

    async def removed_device(self) -> str:
        """A device removed from the config leaves HA; the others stay."""
        kept = {k: v for k, v in DEVICES.items() if k != "trailer-7"}
        self.bridges[-1].stop()
        self.start_bridge(kept)

        async def gone() -> bool:
            registry = await self.ws.call("config/entity_registry/list")
            return not any("trailer_7" in e["entity_id"] for e in registry)
        await until(gone, 30, "Trailer 7's entities removed")
        devices = await self.ws.call("config/device_registry/list")
        assert not [d for d in devices if d["name"] == "Trailer 7"], "Trailer 7's device is still there"
        await until(_available(self.ws, kept), 30, "the others available")
        return "its 14 entities and its device are gone; Truck 12 and Van 3 stay"

    def log_problems(self) -> list[str]:
        """MQTT warnings and errors in HA's logs: each run's own (at a restart HA renames the last one .log.1)."""
        earlier = self.ha.log_path.with_name(self.ha.log_path.name + ".1")
        problems = []
        for path in (earlier, self.ha.log_path):
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            problems += [f"{path.name}: {line}" for line in lines
                         if ("WARNING" in line or "ERROR" in line) and "mqtt" in line]
        return problems

    # --- the run ------------------------------------------------------------------------------------

    async def run(self, screenshot: Path | None) -> None:
        """Every check in order."""
        await self.check("discovery payloads of both modes pass HA's own MQTT schemas", self.schemas)
        await self.check("examples/home-assistant.yaml passes HA's check_config", self.example)
        self.started_at = datetime.now(UTC).isoformat()
        self.start_bridge(DEVICES, "entity")
        self.ha.start()
        async with aiohttp.ClientSession() as session:
            await self.ha.wait_up(session)
            await self.ha.onboard(session)
            entry = await self.ha.add_mqtt(session, self.broker.port)
            self.report.check("MQTT integration added through the config flow", entry.get("type") == "create_entry",
                              str(entry.get("title")))
            self.ws = Socket(self.ha, session)
            await self.ws.connect()
            await self.check("an install announced per entity (the bridge before device discovery)",
                             self.per_entity_install)
            await self.check("it migrates to device discovery keeping entity ids, registry entries and history",
                             self.migration)
            await self.check("every entity exists with its name, device and availability", self.entities_and_devices)
            await self.check("bridge device shows connection, version, in flight and backlog",
                             self.bridge_device_state)
            await self.check("changing a select and numbers in HA changes the next capture's request",
                             self.settings_shape_the_capture)
            await self.check("pressing a button moves the sensors and fires the event once",
                             self.press_moves_sensors_and_fires_once)
            await self.check("Camera online follows the last cloud answer", self.camera_online)
            await self.check("the blueprint, imported, captures on its trigger and notifies the file id or the error",
                             lambda: check_blueprint(self.ha, self.ws, session))
            await self.check("stopping the bridge makes everything unavailable and the connection off",
                             self.bridge_stops)
            await self.check("starting the bridge again brings everything back", self.bridge_returns)
            await self.check("restarting Home Assistant brings everything back", lambda: self.ha_restarts(session))
            await self.check("a device removed from the config disappears from HA", self.removed_device)
            if screenshot is not None:
                await take_screenshot(self.ha, self.ws, session, screenshot)
            await self.ws.close()
        problems = self.log_problems()
        self.report.check("no MQTT warnings or errors in Home Assistant's logs", not problems,
                          f"{len(problems)} line(s): {problems[:3]}" if problems else
                          "neither before its restart (.log.1) nor after")


async def run_checks(workdir: Path, version: str, screenshot: Path | None = None) -> int:
    """The whole scenario on one lane; returns the number of failed checks."""
    report = Report()
    runtime = ha_env.ensure(version)
    print(f"Home Assistant {runtime.lane.version}", flush=True)
    scenario = Scenario(workdir, runtime, report)
    try:
        await scenario.run(screenshot)
    except Exception as exc:  # a broken setup step is one more FAIL, with what happened
        report.check("the scenario ran to its end", False, f"{type(exc).__name__}: {exc}"[:500])
    finally:
        if report.failed:  # keep HA's config and logs with the others
            with contextlib.suppress(OSError):
                shutil.copytree(scenario.ha.config_dir, workdir / "ha-config", dirs_exist_ok=True)
        scenario.close()
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ha-version", default=ha_env.DEFAULT, help=f"a lane: {', '.join(ha_env.LANES)}")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, HA config)")
    parser.add_argument("--screenshot", type=Path, help="also save Truck 12's device page (headless Chromium)")
    args = parser.parse_args()
    ha_env.lane(args.ha_version)  # a wrong version is one line, before anything starts
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ha-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failed = asyncio.run(run_checks(workdir, args.ha_version, args.screenshot))
    took = time.monotonic() - started
    print(f"{'FAILED' if failed else 'OK'}: {failed} failed check(s) in {took:.0f}s; logs in {workdir}"
          if failed or args.keep else f"OK: every check passed in {took:.0f}s", flush=True)
    if not failed and args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
