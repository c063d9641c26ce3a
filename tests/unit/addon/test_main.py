"""What the add-on's entry point logs at start: the effective config, masked, and short for big fleets."""

from __future__ import annotations

from bridge.addon.main import LISTED_DEVICES, summary
from bridge.config import Config


def config(devices: int) -> Config:
    return Config.model_validate({
        "mqtt": {"url": "mqtt://core-mosquitto:1883", "username": "addons", "password": "broker-secret"},
        "cloud": {"username": "fleet", "password": "cloud-secret"},
        "devices": {f"cam-{n}": f"a64b2e58-9305-4a01-9c51-{n:012d}" for n in range(devices)},
    })


def test_a_small_fleet_is_listed_and_secrets_are_masked() -> None:
    shown = summary(config(LISTED_DEVICES))
    assert len(shown["devices"]) == LISTED_DEVICES
    assert "broker-secret" not in str(shown)
    assert "cloud-secret" not in str(shown)
    assert shown["cloud"]["password"] == "**********"


def test_a_big_fleet_is_counted() -> None:
    assert summary(config(3000))["devices"] == "3000 devices"
