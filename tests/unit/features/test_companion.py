"""The companion: settings topics, bridge info, discovery announcements and their clean-up."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bridge.config import Config
from bridge.core.settings import SettingsStore
from bridge.features.companion import Companion
from bridge.features.discovery import discovery_messages

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
GUID2 = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"


def make(devices: dict[str, Any] | None = None, **bridge: Any) -> tuple[Companion, list[tuple[str, bytes, bool]]]:
    config = Config.model_validate(
        {"cloud": {"token": "t"}, "devices": devices if devices is not None else {"truck-12": GUID},
         "bridge": bridge}
    )
    sent: list[tuple[str, bytes, bool]] = []
    store = SettingsStore({d: e.defaults for d, e in config.devices.items()}, config.limits())
    return Companion(config, lambda t, p, r: sent.append((t, p, r)), store), sent


def on(sent: list[tuple[str, bytes, bool]], topic: str) -> list[Any]:
    return [json.loads(p) if p else None for t, p, _ in sent if t == topic]


def test_sync_publishes_every_devices_settings_retained() -> None:
    companion, sent = make({"truck-12": {"guid": GUID, "defaults": {"resolution": "1080p"}}, "van-3": GUID2})
    companion.on_settings_snapshot(json.dumps({GUID: {"camera": "top"}, "truck-12": {"count": 2}}).encode())
    companion.on_synced()
    assert all(retain for _, _, retain in sent)
    assert on(sent, "devices/truck-12/capture/settings") == [
        {"camera": "main", "type": "photo", "count": 2, "duration": 10, "resolution": "1080p", "interval": 0}
    ]
    assert on(sent, "devices/van-3/capture/settings")[0]["resolution"] == "720p"
    assert on(sent, f"devices/{GUID}/capture/settings")[0]["camera"] == "top"
    # After the sync, copies of the snapshot are our own echoes: they change nothing.
    companion.on_settings_snapshot(b"{}")
    assert companion.store.current("truck-12")["count"] == 2
    companion.on_synced()
    assert len(sent) == 3


def test_a_settings_change_is_applied_published_and_remembered() -> None:
    companion, sent = make()
    companion.on_settings_set("devices/truck-12/capture/settings/set", b'{"FResolution":3,"count":4}', False)
    assert on(sent, "devices/truck-12/capture/settings")[-1]["resolution"] == "1080p"
    assert on(sent, "devices/bridge/settings") == [{"truck-12": {"resolution": "1080p", "count": 4}}]
    assert companion.store.current("truck-12")["count"] == 4


def test_invalid_settings_change_nothing_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    companion, sent = make()
    with caplog.at_level(logging.WARNING):
        companion.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":0,"resolution":"4k"}', False)
    assert companion.store.current("truck-12")["count"] == 1
    assert "settings for truck-12 not changed: count: must be between 1 and 100, got 0" in caplog.text
    # The current settings again, so a UI that showed the refused value shows the real one.
    assert on(sent, "devices/truck-12/capture/settings") == [companion.store.current("truck-12")]
    assert on(sent, "devices/bridge/settings") == []


def test_unknown_devices_and_retained_changes_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    companion, sent = make(guid_topic_ids=True)
    with caplog.at_level(logging.WARNING):
        companion.on_settings_set("devices/nobody/capture/settings/set", b'{"count":2}', False)
        companion.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":2}', True)
    assert sent == []
    assert "ignored settings for 'nobody': not a configured device nor a GUID" in caplog.text
    assert "ignored a retained settings change" in caplog.text
    # A GUID topic id is a device commands reach: its settings are kept.
    companion.on_settings_set(f"devices/{GUID2}/capture/settings/set", b'{"count":2}', False)
    assert on(sent, f"devices/{GUID2}/capture/settings")[-1]["count"] == 2


def test_guid_ids_off_refuses_their_settings() -> None:
    companion, sent = make(guid_topic_ids=False)
    companion.on_settings_set(f"devices/{GUID2}/capture/settings/set", b'{"count":2}', False)
    assert sent == []


def test_bridge_info_only_when_it_changed() -> None:
    companion, sent = make()
    companion.publish_info(0, 0)
    companion.publish_info(0, 0)
    companion.publish_info(3, 1)
    companion.publish_info(3, 1, force=True)
    infos = on(sent, "devices/bridge/info")
    assert [(i["in_flight"], i["backlog"]) for i in infos] == [(0, 0), (3, 1), (3, 1)]
    assert all(i["version"] for i in infos)


def test_configs_no_longer_announced_are_cleared_once_ours() -> None:
    companion, sent = make({"truck-12": GUID, "van-3": GUID2})
    old = dict(discovery_messages(companion._config))
    companion, sent = make({"truck-12": GUID})
    companion.announce()
    announced = len(sent)
    for topic, payload in old.items():
        companion.on_discovery_config(topic, payload, True)
    cleared = [t for t, p, r in sent[announced:] if p == b"" and r]
    assert len(cleared) == 14
    assert all("/van-3_" in t for t in cleared)
    # Live copies (our own echoes) and empty payloads (our clearing) do nothing.
    companion.on_discovery_config("homeassistant/button/capture_bridge/van-3_capture/config", old[cleared[0]], False)
    companion.on_discovery_config(cleared[0], b"", True)
    # Someone else's config under our node id is left alone.
    foreign = json.dumps({"device": {"identifiers": ["x"], "via_device": "someone_else"}}).encode()
    companion.on_discovery_config("homeassistant/button/capture_bridge/zzz/config", foreign, True)
    assert len(sent) == announced + 14


def test_terminal_number_joins_the_serial_number_and_survives_a_restart() -> None:
    companion, sent = make()
    companion.announce()
    state = {"status": "ok", "terminal_num": "804250900200"}
    companion.observe_state("truck-12", json.dumps(state).encode())
    republished = [json.loads(p) for t, p, _ in sent[18:]]
    assert len(republished) == 14
    assert {p["device"]["serial_number"] for p in republished} == {f"804250900200 ({GUID})"}
    companion.observe_state("truck-12", json.dumps(state).encode())  # nothing new
    assert len(sent) == 18 + 14

    # A restarted bridge reads it back from its retained configs before any capture.
    retained = {t: p for t, p, _ in sent}
    companion, sent = make()
    companion.announce()
    for topic, payload in retained.items():
        companion.on_discovery_config(topic, payload, True)
    serials = {json.loads(p)["device"].get("serial_number") for t, p, _ in sent[18:]}
    assert serials == {f"804250900200 ({GUID})"}


def test_homeassistant_online_announces_again() -> None:
    companion, sent = make()
    companion.on_homeassistant_status(b"offline")
    assert sent == []
    companion.on_homeassistant_status(b"online")
    assert len(sent) == 18


def test_a_reconnect_publishes_settings_again_for_a_broker_that_lost_them() -> None:
    companion, sent = make()
    companion.on_reconnected()
    assert sent == []  # before the first sync there is nothing of ours to restore
    companion.on_synced()
    companion.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":4}', False)
    sent.clear()
    companion.on_reconnected()
    assert on(sent, "devices/bridge/settings") == [{"truck-12": {"count": 4}}]
    assert on(sent, "devices/truck-12/capture/settings")[0]["count"] == 4


def test_configs_still_announced_are_never_cleared_even_before_the_first_announcement() -> None:
    companion, sent = make({"truck-12": GUID})
    for topic, payload in discovery_messages(companion._config):
        companion.on_discovery_config(topic, payload, True)
    assert [t for t, p, _ in sent if p == b""] == []


def test_settings_of_a_device_removed_from_the_config_are_forgotten() -> None:
    companion, sent = make({"truck-12": GUID}, guid_topic_ids=False)
    companion.on_settings_snapshot(json.dumps({"trailer-7": {"count": 2}, "truck-12": {"count": 3}}).encode())
    companion.on_synced()
    assert companion.store.devices() == ["truck-12"]
    assert on(sent, "devices/trailer-7/capture/settings") == [None]  # its retained settings cleared
    assert on(sent, "devices/bridge/settings") == [{"truck-12": {"count": 3}}]
