"""The Home Assistant feature: discovery announcements, their clean-up and migration, terminal numbers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.features import device_discovery
from bridge.features.discovery import discovery_messages
from bridge.features.homeassistant import HomeAssistant, migrate_settle
from tests.support.aio import run
from tests.support.fakes import GUID, GUID2
from tests.support.features import Sent, config_of, recorder
from tests.support.waits import wait_until_async

ENTITY = {"discovery": "entity"}
DEVICE = {"discovery": "device"}
MIGRATE = b'{"migrate_discovery":true}'


def make(devices: dict[str, Any] | None = None, mode: dict[str, Any] | None = None,
         **bridge: Any) -> tuple[HomeAssistant, Sent]:
    sent: Sent = []
    config = config_of(devices, homeassistant=mode or ENTITY, **bridge)
    return HomeAssistant(config, recorder(sent), lambda n: 0.0), sent


def test_configs_no_longer_announced_are_cleared_once_ours() -> None:
    feature, sent = make({"truck-12": GUID, "van-3": GUID2})
    old = dict(discovery_messages(feature._config))
    feature, sent = make({"truck-12": GUID})
    feature.announce()
    announced = len(sent)
    for topic, payload in old.items():
        feature.on_discovery_config(topic, payload, True)
    cleared = [t for t, p, r in sent[announced:] if p == b"" and r]
    assert len(cleared) == 14
    assert all("/van-3_" in t for t in cleared)
    # Live copies (our own echoes) and empty payloads (our clearing) do nothing.
    feature.on_discovery_config("homeassistant/button/capture_bridge/van-3_capture/config", old[cleared[0]], False)
    feature.on_discovery_config(cleared[0], b"", True)
    # Someone else's config under our node id is left alone.
    foreign = json.dumps({"device": {"identifiers": ["x"], "via_device": "someone_else"}}).encode()
    feature.on_discovery_config("homeassistant/button/capture_bridge/zzz/config", foreign, True)
    assert len(sent) == announced + 14


def test_terminal_number_joins_the_serial_number_from_this_runs_answers_only() -> None:
    feature, sent = make()
    feature.announce()
    state = {"status": "ok", "terminal_num": "804250900200"}
    feature.observe_state("truck-12", json.dumps(state).encode())
    republished = [json.loads(p) for t, p, _ in sent[18:]]
    assert len(republished) == 14
    assert {p["device"]["serial_number"] for p in republished} == {f"804250900200 ({GUID})"}
    feature.observe_state("truck-12", json.dumps(state).encode())  # nothing new
    assert len(sent) == 18 + 14

    # A restarted bridge announces the GUID alone until the cloud names the terminal again: a
    # retained config, ours or forged, is never read back into the device's identity.
    forged = {t: p.replace(b"804250900200", b"666") for t, p, _ in sent}
    feature, sent = make()
    feature.announce()
    for topic, payload in forged.items():
        feature.on_discovery_config(topic, payload, True)
    assert len(sent) == 18
    assert {json.loads(p)["device"].get("serial_number") for t, p, _ in sent if "truck-12" in t} == {GUID}


def test_homeassistant_online_announces_again() -> None:
    feature, sent = make()
    feature.on_homeassistant_status(b"offline")
    assert sent == []
    feature.on_homeassistant_status(b"online")
    assert len(sent) == 18


def test_configs_still_announced_are_never_cleared_even_before_the_first_announcement() -> None:
    feature, sent = make({"truck-12": GUID})
    for topic, payload in discovery_messages(feature._config):
        feature.on_discovery_config(topic, payload, True)
    assert [t for t, p, _ in sent if p == b""] == []


# --- device-based discovery, and the migration between the modes ----------------------------------


def test_device_mode_announces_one_retained_config_per_device() -> None:
    feature, sent = make({"truck-12": GUID, "van-3": GUID2}, DEVICE)
    feature.announce()
    assert [(t, r) for t, _, r in sent] == [
        ("homeassistant/device/capture-bridge/bridge/config", True),
        ("homeassistant/device/capture-bridge/truck-12/config", True),
        ("homeassistant/device/capture-bridge/van-3/config", True),
    ]
    truck = json.loads(sent[1][1])
    assert len(truck["components"]) == 14
    assert truck["device"]["name"] == "truck-12"
    assert truck["origin"]["name"] == "capture-bridge"


def test_device_mode_clears_only_this_bridges_device_configs() -> None:
    feature, _ = make({"truck-12": GUID, "van-3": GUID2}, DEVICE)
    old = dict(device_discovery.device_messages(feature._config))
    feature, sent = make({"truck-12": GUID}, DEVICE)
    van = "homeassistant/device/capture-bridge/van-3/config"
    feature.on_discovery_config(van, old[van], True)
    assert sent == [(van, b"", True)]
    # Under our node but not announced by us (another program's origin, another bridge's device): kept.
    stranger = json.loads(old[van])
    stranger["origin"] = {"name": "zigbee2mqtt"}
    feature.on_discovery_config(van, json.dumps(stranger).encode(), True)
    other_bridge = json.loads(old[van])
    other_bridge["device"]["via_device"] = "capture_bridge_bridge_site-b"
    feature.on_discovery_config(van, json.dumps(other_bridge).encode(), True)
    feature.on_discovery_config(van, b"not json", True)
    assert sent == [(van, b"", True)]


@pytest.mark.parametrize(("old_mode", "new_mode"), [(ENTITY, DEVICE), (DEVICE, ENTITY)])
def test_an_install_in_the_other_mode_is_migrated_in_the_documented_order(
    old_mode: dict[str, Any], new_mode: dict[str, Any]
) -> None:
    async def go() -> None:
        devices = {"truck-12": GUID, "van-3": GUID2}
        old_feature, old_sent = make(devices, old_mode)
        old_feature.announce()
        kept = {"truck-12": GUID}  # van-3 was removed from the config meanwhile: it leaves HA
        feature, sent = make(kept, new_mode)
        for topic, payload, _ in old_sent:  # the broker's retained copies, before `ready`
            feature.on_discovery_config(topic, payload, True)
        removed = list(sent)
        assert removed
        assert all("van-3" in t and p == b"" and r for t, p, r in removed)
        del sent[:]
        feature.ready()
        moved = {t for t, _, _ in old_sent if "van-3" not in t}
        # 1. a migrate request, not retained, on every old topic of a camera still configured ...
        assert {t for t, _, _ in sent} == moved
        assert all(p == MIGRATE and not r for _, p, r in sent)
        await wait_until_async(lambda: len(sent) > len(moved), 2, "the announcement after the settle time")
        new = dict(device_discovery.announcement(feature._config))
        announced = sent[len(moved):len(moved) + len(new)]
        # 2. ... then the new configs, retained ...
        assert {t for t, _, _ in announced} == set(new)
        assert all(r for _, _, r in announced)
        # 3. ... then the old topics cleared: nothing of the migration stays retained.
        assert sent[len(moved) + len(new):] == [(t, b"", True) for t in sorted(moved)]
        retained = {}
        for topic, payload, retain in [*old_sent, *removed, *sent]:
            if retain:
                retained[topic] = payload
        assert {t for t, p in retained.items() if p} == set(new)
        assert MIGRATE not in retained.values()
        # The same unique ids on both sides: HA keeps the entities, their ids and history.
        assert _unique_ids({t: p for t, p, _ in announced}) == _unique_ids(
            {t: p for t, p, _ in old_sent if t in moved})

    run(go())


def test_nothing_is_announced_before_ready_and_reconnections_announce_at_once() -> None:
    async def go() -> None:
        feature, sent = make(None, DEVICE)
        feature._connected()
        assert sent == []
        feature.ready()
        assert len(sent) == 2
        feature.announcer.cancel()
        feature.announcer._started = -1e9  # the 5 s interval has passed
        feature._connected()
        assert len(sent) == 4

    run(go())


def test_the_settle_time_grows_with_the_migration() -> None:
    assert migrate_settle(14) >= 2.0
    assert migrate_settle(42_000) > migrate_settle(14) + 30


def _unique_ids(messages: dict[str, bytes]) -> set[str]:
    ids = set()
    for payload in messages.values():
        data = json.loads(payload)
        for config in data.get("components", {"": data}).values():
            ids.add(config["unique_id"])
    return ids


def test_an_old_config_found_after_ready_is_migrated_too_and_a_stale_copy_is_not_migrated_twice() -> None:
    async def go() -> None:
        old_feature, old_sent = make(None, ENTITY)
        old_feature.announce()
        feature, sent = make(None, DEVICE)
        feature.ready()
        announced = len(sent)
        topic, payload, _ = old_sent[-1]
        feature.on_discovery_config(topic, payload, True)
        feature.on_discovery_config(topic, payload, True)  # redelivered while migrating: once is enough
        assert sent[announced:] == [(topic, MIGRATE, False)]
        feature.announcer.cancel()
        feature.announcer._started = -1e9  # the 5 s interval has passed
        await wait_until_async(lambda: sent[-1] == (topic, b"", True), 2, "the old topic cleared")
        assert [t for t, _, _ in sent[announced + 1:-1]] == [t for t, _ in device_discovery.announcement(
            feature._config)]

    run(go())
