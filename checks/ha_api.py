"""Home Assistant for `make ha-check`: its process on a lane, its REST and websocket API, PASS/FAIL lines."""

# A check runs real programs (Home Assistant and a browser) with arguments it builds itself.
# ruff: noqa: S603

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from checks.ha_env import Runtime
from tests.support.broker import free_port
from tests.support.waits import wait_until_async

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "home-assistant.yaml"
USER, PASSWORD = "check", "check-password-1"
CLIENT = "http://127.0.0.1/"  # an IndieAuth client id HA accepts for the onboarding token


# --- the pieces ----------------------------------------------------------------------------------


class HomeAssistant:
    """A Home Assistant core process of a lane, with its own configuration directory and port."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config_dir = runtime.workdir("ha-check")  # where HA can see it (inside the chroot)
        self.log_path = self.config_dir / "home-assistant.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        (self.config_dir / "automations.yaml").write_text("[]\n")
        (self.config_dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: ha-check\n  time_zone: UTC\n  unit_system: metric\n"
            "  latitude: 0\n  longitude: 0\n  elevation: 0\n  country: DE\n  currency: EUR\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nwebsocket_api:\nhistory:\n"
            "recorder:\n  commit_interval: 1\n"
            "automation: !include automations.yaml\n"
            "logger:\n  default: warning\n"
        )

    def start(self) -> None:
        """Start (returns at once)."""
        self._out = (self.config_dir / "hass.stdout").open("ab")
        inside = self.runtime.inside
        self.proc = subprocess.Popen(
            self.runtime.command("hass", "-c", inside(self.config_dir), "--log-file", inside(self.log_path),
                                 "--skip-pip"),
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
        broker: dict[str, Any] = {"broker": "127.0.0.1", "port": broker_port}
        for field in form["data_schema"]:
            if field["name"] == "other_settings":  # a required section from 2026.x on (400 without it)
                # What the UI sends for a collapsed section: its defaults, no client certificate, no TLS.
                broker["other_settings"] = {f["name"]: f["default"] for f in field["schema"] if "default" in f} | {
                    "set_client_cert": False, "set_ca_cert": "off"}
        async with session.post(f"{self.url}/api/config/config_entries/flow/{form['flow_id']}", headers=self.auth,
                                json=broker) as response:
            if response.status != 200:
                raise RuntimeError(f"the MQTT flow's broker step answered {response.status}: {await response.text()}; "
                                   f"its form: {json.dumps(form['data_schema'])[:400]}")
            result: dict[str, Any] = await response.json()
        return result


class Socket:
    """HA's websocket API: commands; every state_changed event kept in `changes`, registry changes apart."""

    def __init__(self, ha: HomeAssistant, session: aiohttp.ClientSession) -> None:
        self.ha = ha
        self.session = session
        self.changes: list[dict[str, Any]] = []
        self.registry_changes: list[dict[str, Any]] = []  # entity_registry_updated: create, update, remove
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
        await self.call("subscribe_events", event_type="entity_registry_updated")

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            data = message.json()
            if data.get("type") == "event":
                event = data["event"]
                if event.get("event_type") == "entity_registry_updated":
                    self.registry_changes.append(event["data"])
                else:
                    self.changes.append(event["data"])
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

    async def notifications(self) -> list[dict[str, Any]]:
        """The persistent notifications HA shows."""
        found: list[dict[str, Any]] = await self.call("persistent_notification/get")
        return found

    async def history(self, entity_id: str, since: str, until: str | None = None) -> list[str]:
        """The states the recorder kept for an entity between two ISO times."""
        period = {"start_time": since} | ({"end_time": until} if until else {})
        found = await self.call("history/history_during_period", entity_ids=[entity_id], no_attributes=True,
                                **period)
        return [str(s.get("s", s.get("state"))) for s in found.get(entity_id, [])]

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


def check_example(runtime: Runtime) -> list[str]:
    """examples/home-assistant.yaml through HA's check_config; the problems it reports."""
    config_dir = runtime.workdir("ha-example")
    (config_dir / "configuration.yaml").write_text(
        "homeassistant:\n  name: example\n  time_zone: UTC\nmqtt:\n" + EXAMPLE.read_text()
    )
    try:
        done = subprocess.run(runtime.command("hass", "--script", "check_config", "-c", runtime.inside(config_dir)),
                              capture_output=True, text=True, timeout=300, check=False)
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
    output = done.stdout + done.stderr
    # Automations and scripts with errors are reported as ERROR lines, not by the exit status.
    problems = [line for line in output.splitlines() if line.startswith("ERROR") or "Invalid config" in line]
    if done.returncode != 0:
        problems.append(f"check_config exited {done.returncode}")
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
         f"--user-data-dir={ha.config_dir / 'chromium-profile'}", "about:blank"],
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
