"""The one-time import of an older bridge's broker memory, against a fake store."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bridge.core import topics
from bridge.core.settings import SettingsStore, StoredSettings
from bridge.features.base import Bus
from bridge.features.legacy_settings import LegacySettings
from bridge.features.settings import DeviceSettings
from tests.support.fakes import GUID, GUID2
from tests.support.features import Sent, config_of, on, recorder
from tests.support.settings_record import FakeRecord

MEMORY = "devices/bridge/settings"


def make(pending: bool = True, synced: bool = True) -> tuple[LegacySettings, DeviceSettings, Sent, FakeRecord, Bus]:
    config = config_of({"truck-12": GUID, "van-3": GUID2})
    sent: Sent = []
    store = SettingsStore(config.guids(), {}, config.limits())
    record = FakeRecord(StoredSettings(import_legacy=pending))
    settings = DeviceSettings(config, recorder(sent), store, record)
    legacy = LegacySettings(config, recorder(sent), settings, record, lambda: synced)
    bus = Bus()
    held: list[Any] = []
    bus.hold_with(held.append)
    settings.attach(bus)
    legacy.attach(bus)

    def open_gate() -> None:  # what the start-up gate does: held changes run
        for work in held:
            work()

    bus.on_ready(open_gate)
    return legacy, settings, sent, record, bus


def test_the_memory_is_imported_under_a_change_queued_meanwhile_then_cleared_and_never_read_again() -> None:
    legacy, settings, sent, record, bus = make()
    assert [(r.topic, r.listen) for r in legacy.routes()] == [(topics.bridge_settings_topic("devices"), True)]
    # Queued while the older bridge was stopped: arrives first, waits behind the start-up.
    settings.on_settings_set("devices/truck-12/capture/settings/set", b'{"interval":5}', False)
    legacy.on_memory(MEMORY, json.dumps({"truck-12": {"resolution": "1080p", "interval": 1},
                                         "van-3": {"count": 4}}).encode(), True)
    assert on(sent, MEMORY) == [None]  # cleared on the broker
    bus.ready()
    assert settings.store.current("truck-12")["resolution"] == "1080p"
    assert settings.store.current("truck-12")["interval"] == 5  # the change on top, not beneath
    assert settings.store.current("van-3")["count"] == 4
    settings.flush()
    assert not record.committed.import_legacy  # done: the next start does not subscribe
    assert record.choices(GUID) == {"resolution": "1080p", "interval": 5}
    legacy.on_memory(MEMORY, b'{"van-3":{"count":2}}', True)
    assert settings.store.current("van-3")["count"] == 4


def test_only_a_retained_memory_counts() -> None:
    legacy, settings, _, _, _ = make()
    legacy.on_memory(MEMORY, b'{"van-3":{"count":2}}', False)
    assert settings.store.current("van-3")["count"] == 1
    assert legacy.pending


def test_without_a_memory_the_import_is_done_once_our_marker_is_back() -> None:
    _, _, _, record, bus = make(synced=True)
    bus.ready()
    assert not record.committed.import_legacy


def test_a_start_without_the_broker_tries_again_next_time() -> None:
    legacy, settings, _, record, bus = make(synced=False)
    bus.ready()
    settings.flush()
    assert record.committed.import_legacy
    legacy.on_memory(MEMORY, b'{"van-3":{"count":2}}', True)  # too late for this run: ignored
    assert settings.store.current("van-3")["count"] == 1


def test_a_fresh_install_never_subscribes_and_drops_what_a_session_kept() -> None:
    legacy, _, _, _, _ = make(pending=False)
    assert [(r.topic, r.listen) for r in legacy.routes()] == [(MEMORY, False)]


def test_a_hostile_memory_writes_only_device_topics_and_logs_at_most_21_lines(caplog: pytest.LogCaptureFixture) -> None:
    legacy, settings, sent, _, bus = make()
    hostile = {"x/../../other/tree": {"count": 2}, "+": {"count": 2}, "truck-12/capture": {"count": 2},
               **{f"junk-{i}": "not an object" for i in range(500)}, "truck-12": {"count": 3}}
    with caplog.at_level(logging.WARNING):
        legacy.on_memory(MEMORY, json.dumps(hostile).encode(), True)
    bus.ready()
    written = {t for t, _, _ in sent}
    assert written == {MEMORY, "devices/truck-12/capture/settings", "devices/van-3/capture/settings"}
    assert settings.store.current("truck-12")["count"] == 3
    assert len([r for r in caplog.records if "legacy settings memory" in r.getMessage()]) == 21
