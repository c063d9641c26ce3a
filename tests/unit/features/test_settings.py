"""The settings feature: settings topics, the retained memory, publishing after the start-up."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bridge.core.settings import SettingsStore
from bridge.features.settings import DeviceSettings
from tests.support.fakes import GUID, GUID2
from tests.support.features import Sent, config_of, on, recorder


def make(devices: dict[str, Any] | None = None, **bridge: Any) -> tuple[DeviceSettings, Sent]:
    config = config_of(devices, **bridge)
    sent: Sent = []
    store = SettingsStore({d: e.defaults for d, e in config.devices.items()}, config.limits())
    return DeviceSettings(config, recorder(sent), store), sent


def test_sync_publishes_every_devices_settings_retained() -> None:
    feature, sent = make({"truck-12": {"guid": GUID, "defaults": {"resolution": "1080p"}}, "van-3": GUID2})
    feature.on_settings_snapshot(json.dumps({GUID: {"camera": "top"}, "truck-12": {"count": 2}}).encode())
    feature.on_synced()
    assert all(retain for _, _, retain in sent)
    assert on(sent, "devices/truck-12/capture/settings") == [
        {"camera": "main", "type": "photo", "count": 2, "duration": 10, "resolution": "1080p", "interval": 0}
    ]
    assert on(sent, "devices/van-3/capture/settings")[0]["resolution"] == "720p"
    assert on(sent, f"devices/{GUID}/capture/settings")[0]["camera"] == "top"
    # After the sync, copies of the snapshot are our own echoes: they change nothing.
    feature.on_settings_snapshot(b"{}")
    assert feature.store.current("truck-12")["count"] == 2
    feature.on_synced()
    assert len(sent) == 3


def test_a_settings_change_is_applied_published_and_remembered() -> None:
    feature, sent = make()
    feature.on_settings_set("devices/truck-12/capture/settings/set", b'{"FResolution":3,"count":4}', False)
    assert on(sent, "devices/truck-12/capture/settings")[-1]["resolution"] == "1080p"
    assert on(sent, "devices/bridge/settings") == [{"truck-12": {"resolution": "1080p", "count": 4}}]
    assert feature.store.current("truck-12")["count"] == 4


def test_invalid_settings_change_nothing_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    feature, sent = make()
    with caplog.at_level(logging.WARNING):
        feature.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":0,"resolution":"4k"}', False)
    assert feature.store.current("truck-12")["count"] == 1
    assert "settings for truck-12 not changed: count: must be between 1 and 100, got 0" in caplog.text
    # The current settings again, so a UI that showed the refused value shows the real one.
    assert on(sent, "devices/truck-12/capture/settings") == [feature.store.current("truck-12")]
    assert on(sent, "devices/bridge/settings") == []


def test_unknown_devices_and_retained_changes_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    feature, sent = make(guid_topic_ids=True)
    with caplog.at_level(logging.WARNING):
        feature.on_settings_set("devices/nobody/capture/settings/set", b'{"count":2}', False)
        feature.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":2}', True)
    assert sent == []
    assert "ignored settings for 'nobody': not a configured device nor a GUID" in caplog.text
    assert "ignored a retained settings change" in caplog.text
    # A GUID topic id is a device commands reach: its settings are kept.
    feature.on_settings_set(f"devices/{GUID2}/capture/settings/set", b'{"count":2}', False)
    assert on(sent, f"devices/{GUID2}/capture/settings")[-1]["count"] == 2


def test_guid_ids_off_refuses_their_settings() -> None:
    feature, sent = make(guid_topic_ids=False)
    feature.on_settings_set(f"devices/{GUID2}/capture/settings/set", b'{"count":2}', False)
    assert sent == []


def test_a_reconnect_publishes_settings_again_for_a_broker_that_lost_them() -> None:
    feature, sent = make()
    feature.on_reconnected()
    assert sent == []  # before the first sync there is nothing of ours to restore
    feature.on_synced()
    feature.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":4}', False)
    sent.clear()
    feature.on_reconnected()
    assert on(sent, "devices/bridge/settings") == [{"truck-12": {"count": 4}}]
    assert on(sent, "devices/truck-12/capture/settings")[0]["count"] == 4


def test_settings_of_a_device_removed_from_the_config_are_forgotten() -> None:
    feature, sent = make({"truck-12": GUID}, guid_topic_ids=False)
    feature.on_settings_snapshot(json.dumps({"trailer-7": {"count": 2}, "truck-12": {"count": 3}}).encode())
    feature.on_synced()
    assert feature.store.devices() == ["truck-12"]
    assert on(sent, "devices/trailer-7/capture/settings") == [None]  # its retained settings cleared
    assert on(sent, "devices/bridge/settings") == [{"truck-12": {"count": 3}}]


def test_a_hostile_memory_cannot_make_the_bridge_write_outside_device_topics(caplog: pytest.LogCaptureFixture) -> None:
    feature, sent = make({"truck-12": GUID}, guid_topic_ids=False)
    hostile = {"x/../../other/tree": {"count": 2}, "+": {"count": 2}, "truck-12/capture": {"count": 2},
               **{f"junk-{i}": "not an object" for i in range(500)}, "truck-12": {"count": 3}}
    with caplog.at_level(logging.WARNING):
        feature.on_settings_snapshot(json.dumps(hostile).encode())
        feature.on_synced()
    written = {t for t, _, _ in sent}
    assert all(t.count("/") == 3 or t == "devices/bridge/settings" for t in written), written
    assert "devices/x/../../other/tree/capture/settings" not in written
    assert feature.store.current("truck-12")["count"] == 3  # what is valid is kept
    warnings = [r for r in caplog.records if "stored settings" in r.getMessage()]
    assert len(warnings) <= 21  # capped, with one summary line
