"""The bridge under test's configuration: the GUIDs the mock cloud knows, and a config builder."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from bridge.sim.behaviours import DEMO_PASSWORD, DEMO_USER, Behaviour
from bridge.sim.server import MockCloud
from tests.support.broker import Broker

# GUIDs the mock cloud knows, one per behaviour.
GUIDS = {behaviour: str(uuid.UUID(int=i + 1, version=4)) for i, behaviour in enumerate(Behaviour)}


def fresh_guids(n: int) -> list[str]:
    """GUIDs no test has used: devices the mock cloud answers with its default behaviour."""
    return [str(uuid.uuid4()) for _ in range(n)]


def bridge_config(broker: Broker, cloud: MockCloud, base_topic: str, workdir: Path) -> dict[str, Any]:
    """A config for the bridge under test: private broker, mock cloud, own topics and journal."""
    return {
        "mqtt": {
            "url": broker.url,
            "client_id": f"bridge-{base_topic}",
            "base_topic": base_topic,
            "reconnect_min": 0.2,
            "reconnect_max": 1.0,
        },
        "cloud": {
            "base_url": cloud.url,
            "username": DEMO_USER,
            "password": DEMO_PASSWORD,
            "read_timeout": 3.0,
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.2,
        },
        "devices": {
            "truck-12": GUIDS[Behaviour.OK],
            **{f"dev-{b.value}": GUIDS[b] for b in Behaviour},
        },
        "bridge": {"journal_path": str(workdir / "journal.sqlite"), "shutdown_timeout": 5.0},
        "homeassistant": {"enabled": False},
    }
