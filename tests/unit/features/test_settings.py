"""The settings feature against a fake durable store: keyed by device, O(1) changes, the cap, held changes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bridge.core.settings import QueuedChange, SettingsStore, StoredDevice, StoredSettings
from bridge.features.base import Bus
from bridge.features.settings import DeviceSettings
from tests.support.fakes import GUID, GUID2
from tests.support.features import Sent, config_of, on, recorder
from tests.support.settings_record import FakeRecord


def make(devices: dict[str, Any] | None = None, stored: StoredSettings | None = None,
         **bridge: Any) -> tuple[DeviceSettings, Sent, FakeRecord]:
    config = config_of(devices, **bridge)
    sent: Sent = []
    store = SettingsStore(config.guids(), {d: e.defaults for d, e in config.devices.items()}, config.limits(),
                          config.bridge.guid_topic_ids)
    record = FakeRecord(stored)
    return DeviceSettings(config, recorder(sent), store, record), sent, record


def change(feature: DeviceSettings, device: str, payload: bytes) -> None:
    feature.on_settings_set(f"devices/{device}/capture/settings/set", payload, False)


def test_ready_publishes_every_devices_stored_settings_retained() -> None:
    stored = StoredSettings({GUID: StoredDevice({"count": 2}, "truck-12"),
                             GUID2.upper().lower(): StoredDevice({"camera": "top"}, GUID2.upper())})
    feature, sent, _ = make({"truck-12": {"guid": GUID, "defaults": {"resolution": "1080p"}}}, stored)
    feature.on_ready()
    assert all(retain for _, _, retain in sent)
    assert on(sent, "devices/truck-12/capture/settings") == [
        {"camera": "main", "type": "photo", "count": 2, "duration": 10, "resolution": "1080p", "interval": 0}
    ]
    assert on(sent, f"devices/{GUID2.upper()}/capture/settings")[0]["camera"] == "top"
    assert feature.store.current(GUID2)["camera"] == "top"
    feature.on_ready()
    assert len(sent) == 2  # once per run; reconnects publish again
    feature.on_reconnected()
    assert len(sent) == 4


def test_a_change_is_one_durable_row_published_and_no_fleet_memory() -> None:
    feature, sent, record = make()
    change(feature, "truck-12", b'{"FResolution":3,"count":4}')
    assert on(sent, "devices/truck-12/capture/settings")[-1]["resolution"] == "1080p"
    assert record.choices(GUID) == {"resolution": "1080p", "count": 4}
    assert record.committed.queued == []  # applied at once: nothing left waiting
    assert feature.store.current("truck-12")["count"] == 4
    assert not [t for t, _, _ in sent if t.startswith("devices/bridge/")]  # no whole-fleet memory any more


def test_case_variants_of_a_guid_and_its_configured_id_share_one_entry() -> None:
    feature, sent, record = make({"truck-12": GUID.upper()})
    change(feature, "truck-12", b'{"resolution":"1080p"}')
    change(feature, GUID.title(), b'{"count":3}')
    change(feature, GUID.upper(), b'{"interval":5}')
    assert list(record.committed.devices) == [GUID]
    assert record.choices(GUID) == {"resolution": "1080p", "count": 3, "interval": 5}
    for device in ("truck-12", GUID, GUID.upper()):
        assert feature.store.current(device)["count"] == 3
    # Retained only on the configured id; the topic id a change came on gets a copy, not retained.
    retained = {t for t, _, r in sent if r}
    assert retained == {"devices/truck-12/capture/settings"}
    assert (f"devices/{GUID.upper()}/capture/settings", False) in {(t, r) for t, _, r in sent}


def test_a_guid_only_devices_settings_follow_the_spelling_last_used() -> None:
    feature, sent, record = make({})
    change(feature, GUID2.upper(), b'{"count":2}')
    change(feature, GUID2, b'{"count":3}')
    assert record.committed.devices[GUID2].topic == GUID2
    assert on(sent, f"devices/{GUID2.upper()}/capture/settings")[-1] is None  # the old one cleared
    assert on(sent, f"devices/{GUID2}/capture/settings")[-1]["count"] == 3
    change(feature, GUID2, b'{"count":1}')  # back to the default: no entry, nothing left retained
    assert record.choices(GUID2) is None
    assert sent[-2:] == [(f"devices/{GUID2}/capture/settings", b"", True),
                         (f"devices/{GUID2}/capture/settings", sent[-1][1], False)]


def test_invalid_settings_change_nothing_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    feature, sent, record = make()
    with caplog.at_level(logging.WARNING):
        change(feature, "truck-12", b'{"count":0,"resolution":"4k"}')
    assert feature.store.current("truck-12")["count"] == 1
    assert "settings for truck-12 not changed: count: must be between 1 and 100, got 0" in caplog.text
    # The current settings again, so a UI that showed the refused value shows the real one.
    assert on(sent, "devices/truck-12/capture/settings") == [feature.store.current("truck-12")]
    assert record.committed.devices == {}


def test_unknown_devices_and_retained_changes_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    feature, sent, _ = make(guid_topic_ids=True)
    with caplog.at_level(logging.WARNING):
        change(feature, "nobody", b'{"count":2}')
        feature.on_settings_set("devices/truck-12/capture/settings/set", b'{"count":2}', True)
    assert sent == []
    assert "ignored settings for 'nobody': not a configured device nor a GUID" in caplog.text
    assert "ignored a retained settings change" in caplog.text


def test_guid_ids_off_refuses_their_settings() -> None:
    feature, sent, _ = make(guid_topic_ids=False)
    change(feature, GUID2, b'{"count":2}')
    assert sent == []


def test_past_the_cap_a_new_guid_is_refused_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    feature, sent, record = make()
    guids = [f"{i:08x}-9305-4a01-9c51-092205123945" for i in range(10_003)]
    with caplog.at_level(logging.WARNING):
        for guid in guids:
            change(feature, guid, b'{"count":2}')
    warnings = [r for r in caplog.records if "max_guid_settings" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert len(record.committed.devices) == 10_000
    assert feature.store.current(guids[-1])["count"] == 1
    assert feature.store.current(guids[-4])["count"] == 2
    # The refused device's topic gets the real settings, not retained: a UI goes back, nothing is left.
    assert sent[-1] == (f"devices/{guids[-1]}/capture/settings", sent[-1][1], False)
    change(feature, guids[0], b'{"count":3}')  # one already kept still changes
    assert record.choices(guids[0]) == {"count": 3}
    change(feature, "truck-12", b'{"count":3}')  # configured devices are not capped
    assert record.choices(GUID) == {"count": 3}
    with caplog.at_level(logging.WARNING):
        change(feature, guids[1], b'{"count":1}')  # back to the defaults: room again...
        change(feature, guids[-1], b'{"count":5}')
        change(feature, guids[-2], b'{"count":5}')
    assert record.choices(guids[-1]) == {"count": 5}
    assert len([r for r in caplog.records if "max_guid_settings" in r.getMessage()]) == 1  # still one a run


def test_a_change_while_commands_are_held_waits_its_turn_and_is_durable_meanwhile() -> None:
    feature, _, record = make()
    held: list[Any] = []
    bus = Bus()
    bus.hold_with(held.append)
    feature.attach(bus)
    change(feature, "truck-12", b'{"count":4}')
    assert feature.store.current("truck-12")["count"] == 1  # not applied before the commands held before it
    assert [(c.device, c.partial) for c in record.committed.queued] == [("truck-12", {"count": 4})]
    assert bus.commit()  # the PUBACK may go: the change is durable
    held.pop()()
    assert feature.store.current("truck-12")["count"] == 4
    feature.flush()
    assert record.committed.queued == []
    assert record.choices(GUID) == {"count": 4}


def test_changes_queued_last_run_are_applied_first_in_order() -> None:
    stored = StoredSettings({GUID: StoredDevice({"resolution": "1080p"}, "truck-12")},
                            [QueuedChange(7, "truck-12", {"count": 4}), QueuedChange(8, "truck-12", {"count": 5})])
    feature, _, record = make(stored=stored)
    held: list[Any] = []
    bus = Bus()
    bus.hold_with(held.append)
    feature.attach(bus)
    change(feature, "truck-12", b'{"interval":3}')
    assert len(held) == 3
    for work in held:
        work()
    feature.flush()
    assert record.choices(GUID) == {"resolution": "1080p", "count": 5, "interval": 3}
    assert record.committed.queued == []


def test_settings_of_a_device_removed_from_the_config_are_forgotten() -> None:
    stored = StoredSettings({GUID: StoredDevice({"count": 3}, "truck-12"),
                             GUID2: StoredDevice({"count": 2}, "trailer-7")})
    feature, sent, record = make({"truck-12": GUID}, stored, guid_topic_ids=False)
    feature.on_ready()
    assert feature.store.keys() == [GUID]
    assert on(sent, "devices/trailer-7/capture/settings") == [None]  # its retained settings cleared
    assert list(record.committed.devices) == [GUID]


def test_a_renamed_device_keeps_its_settings_and_moves_them(caplog: pytest.LogCaptureFixture) -> None:
    stored = StoredSettings({GUID: StoredDevice({"count": 3, "interval": 99999}, "truck-12")})
    feature, sent, record = make({"lorry-12": GUID}, stored, max_interval=100)
    with caplog.at_level(logging.WARNING):
        feature.on_ready()
    assert on(sent, "devices/truck-12/capture/settings") == [None]
    assert on(sent, "devices/lorry-12/capture/settings")[0]["count"] == 3
    assert record.committed.devices[GUID] == StoredDevice({"count": 3}, "lorry-12")
    assert "stored settings of" in caplog.text  # the interval a newer limit refuses, named


def test_a_store_that_cannot_be_written_holds_acknowledgements_and_says_so_once(
    caplog: pytest.LogCaptureFixture
) -> None:
    feature, _, record = make()
    record.fail = True
    with caplog.at_level(logging.ERROR):
        change(feature, "truck-12", b'{"count":4}')
        assert feature.flush() is False
    assert len([r for r in caplog.records if "settings store" in r.getMessage()]) == 1
    record.fail = False
    assert feature.flush() is True
    assert record.choices(GUID) == {"count": 4}
