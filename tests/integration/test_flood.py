"""A short command flood with Home Assistant flapping (the long one is `make flood`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.flood import measure_birth, run_flood


@pytest.mark.timeout(180)
def test_flood_with_home_assistant_flapping_loses_no_state(broker: Broker, tmp_path: Path) -> None:
    result = run_flood(broker.port, tmp_path, commands=20_000, onlines=20, devices=301, guids=500, answer_timeout=120)
    print(result.summary())
    assert result.missing == [], result.log_tail
    assert result.answered_live + result.answered_after_restart == 20_000
    # 20 onlines in a couple of seconds: coalesced into a few announcements, not 20.
    assert result.announcements <= 6, result.summary()
    assert result.rss_after_mb < 120, result.summary()
    assert "Traceback" not in result.log_tail


@pytest.mark.timeout(180)
def test_a_home_assistant_birth_costs_one_message_per_camera_with_device_discovery(
    broker: Broker, tmp_path: Path
) -> None:
    entity = measure_birth(broker.port, tmp_path / "entity", devices=60, discovery="entity")
    device = measure_birth(broker.port, tmp_path / "device", devices=60, discovery="device")
    assert entity.messages == 4 + 14 * 60
    assert device.messages == 1 + 60  # the bridge device and one per camera
    assert device.bytes < 0.6 * entity.bytes, (device, entity)
