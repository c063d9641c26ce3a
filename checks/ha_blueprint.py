"""The blueprint in a real Home Assistant: imported through HA's API, an automation made from it per camera, run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from checks.ha_api import HomeAssistant, Socket, until

BLUEPRINT = Path(__file__).resolve().parents[1] / "blueprints" / "automation" / "capture-bridge" / \
    "capture_and_notify.yaml"
PATH = "capture-bridge/capture_and_notify.yaml"  # under <config>/blueprints/automation/, as the UI's import puts it


async def import_blueprint(ws: Socket) -> None:
    """What the UI's import does once it has the file: save it; HA then lists it, valid."""
    await ws.call("blueprint/save", domain="automation", path=PATH, yaml=BLUEPRINT.read_text())
    listed = await ws.call("blueprint/list", domain="automation")
    assert PATH in listed, sorted(listed)
    assert "error" not in listed[PATH], listed[PATH]


async def add_automation(ha: HomeAssistant, session: aiohttp.ClientSession, key: str, camera: str) -> str:
    """An automation from the blueprint, through the automation editor's API; its entity id."""
    body: dict[str, Any] = {
        "alias": f"ha-check {key}",
        "description": "",
        "use_blueprint": {"path": PATH, "input": {
            "trigger": [{"trigger": "event", "event_type": f"ha_check_{key}"}],
            "capture_button": f"button.{camera}_capture",
            "capture_event": f"event.{camera}_capture_event",
            "timeout": 30,
        }},
    }
    async with session.post(f"{ha.url}/api/config/automation/config/ha_check_{key}", json=body,
                            headers=ha.auth) as response:
        response.raise_for_status()
    return f"automation.ha_check_{key}"


async def notified(ws: Socket, title: str, seen: int) -> dict[str, Any]:
    """The first notification titled `title` after the `seen` first ones."""
    found: list[dict[str, Any]] = []

    async def arrived() -> bool:
        found[:] = [n for n in (await ws.notifications())[seen:] if n.get("title") == title]
        return bool(found)
    await until(arrived, 40, f"a notification titled {title!r}")
    return found[0]


async def check_blueprint(ha: HomeAssistant, ws: Socket, session: aiohttp.ClientSession) -> str:
    """Import, two automations (an ok camera and an offline one), fire their triggers, read the notifications."""
    await import_blueprint(ws)
    automations = [await add_automation(ha, session, "truck", "truck_12"),
                   await add_automation(ha, session, "van", "van_3")]

    async def enabled() -> bool:
        states = await ws.states()
        return all(states.get(a, {}).get("state") == "on" for a in automations)
    await until(enabled, 30, "both automations loaded and on")

    seen = len(await ws.notifications())
    await ws.call("fire_event", event_type="ha_check_truck")
    ok = await notified(ws, "Truck 12 Capture", seen)
    file_id = (await ws.states())["sensor.truck_12_last_file"]["state"]
    assert ok["message"] == f"captured: file {file_id}", ok

    seen = len(await ws.notifications())
    await ws.call("fire_event", event_type="ha_check_van")
    failed = await notified(ws, "Van 3 Capture", seen)
    assert failed["message"].startswith("capture failed: device_offline ("), failed
    return f"{ok['message']!r} for Truck 12; {failed['message']!r} for Van 3"
