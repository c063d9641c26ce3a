"""Answers in the field: what a new user meets with real brokers, flows and typos.

Each test goes through a real Mosquitto, the real bridge process and the mock cloud over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.mockcloud import Behaviour, MockCloud
from tests.conftest import GUIDS
from tests.integration.test_ecosystem import send
from tests.support.bridge_proc import BridgeProcess
from tests.support.probe import Probe

StartBridge = Callable[..., BridgeProcess]


# --- 1. a reused request_id after the de-duplication window is a new capture ---------------------


def test_request_id_after_the_window_is_a_new_capture_on_a_quiet_bridge(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    start_bridge({"bridge": {"dedupe_window": 1.0}})
    guid = GUIDS[Behaviour.OK]
    first = send(probe, base_topic, "truck-12", {"request_id": "fixed"})
    again = send(probe, base_topic, "truck-12", {"request_id": "fixed"})
    assert again["file_id"] == first["file_id"]  # within the window: the first one's state
    assert len(cloud.instructions_for(guid)) == 1
    time.sleep(1.5)  # ok: the de-dup window itself must pass, with no other command in between
    later = send(probe, base_topic, "truck-12", {"request_id": "fixed"})
    assert len(cloud.instructions_for(guid)) == 2
    assert later["status"] == "ok"
    assert later["file_id"] != first["file_id"]
    assert later["timestamp"] != first["timestamp"]
