"""The durable settings store on real SQLite files: rows, queued changes, the one-time import flag."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from bridge.core.settings import StoreError
from bridge.infra.journal import Journal, written_by_an_older_bridge
from bridge.infra.settings_db import SettingsDb
from tests.support.settings_record import write_older_journal

GUID = "a64b2e58-9305-4a01-9c51-092205123945"


def test_rows_survive_a_reopen_and_a_change_is_one_row(tmp_path: Path) -> None:
    db = SettingsDb(tmp_path / "s.sqlite")
    db.put(GUID, {"resolution": "1080p"}, "truck-12")
    db.put(GUID, {"resolution": "1080p", "count": 4}, "truck-12")  # the same device: one row
    db.put("0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10", {"count": 2}, "0B7E1F52-1C1F-4C35-9A51-6A2A3C7B9D10")
    db.commit()
    db.close()
    again = SettingsDb(tmp_path / "s.sqlite").load()
    assert again.devices[GUID].choices == {"resolution": "1080p", "count": 4}
    assert again.devices[GUID].topic == "truck-12"
    assert len(again.devices) == 2
    assert not again.import_legacy


def test_no_choices_removes_the_row(tmp_path: Path) -> None:
    db = SettingsDb(tmp_path / "s.sqlite")
    db.put(GUID, {"count": 4}, "truck-12")
    db.commit()
    db.put(GUID, {}, "truck-12")
    db.commit()
    assert db.load().devices == {}


def test_a_queued_change_is_durable_until_applied_and_never_written_when_applied_at_once(tmp_path: Path) -> None:
    db = SettingsDb(tmp_path / "s.sqlite")
    waits = db.queue("truck-12", {"count": 4})
    db.commit()
    assert [(c.id, c.device, c.partial) for c in SettingsDb(tmp_path / "s.sqlite").load().queued] == [
        (waits, "truck-12", {"count": 4})]
    at_once = db.queue("van-3", {"count": 2})
    db.applied(at_once)
    assert db._queued == {}  # applied in the same commit: no insert, no delete
    db.applied(waits)
    db.commit()
    assert db.load().queued == []
    # Ids keep growing across a reopen (a queued row left by a crash keeps its place).
    db.queue("x", {"count": 3})
    db.commit()
    db.close()
    assert SettingsDb(tmp_path / "s.sqlite").queue("y", {}) > at_once + 1


def test_a_failed_commit_is_rolled_back_kept_and_applied_later(tmp_path: Path) -> None:
    db = SettingsDb(tmp_path / "s.sqlite")
    db._db.execute("PRAGMA max_page_count = 2")  # the connection's own cap: SQLITE_FULL soon
    for i in range(300):
        db.put(f"{i:08d}-9305-4a01-9c51-092205123945", {"resolution": "1080p", "count": i + 1}, str(i))
    with pytest.raises(StoreError, match="full"):
        db.commit()
    assert not db.ok  # /healthz says so
    assert db.load().devices == {}  # nothing half-written
    db._db.execute("PRAGMA max_page_count = 100000")
    db.commit()
    assert db.ok
    assert len(db.load().devices) == 300


def test_an_unreadable_row_is_skipped_not_fatal(tmp_path: Path) -> None:
    db = SettingsDb(tmp_path / "s.sqlite")
    db.put(GUID, {"count": 4}, "truck-12")
    db.commit()
    db._db.execute("INSERT INTO settings VALUES ('bad', 'not json', 'x'), ('list', '[1]', 'y')")
    db._db.execute("INSERT INTO queued VALUES (99, 'x', '{')")
    stored = SettingsDb(tmp_path / "s.sqlite").load()
    assert list(stored.devices) == [GUID]
    assert stored.queued == []


def test_a_path_that_cannot_be_a_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError, match=r"cannot open .*dir\.sqlite: "):
        SettingsDb(tmp_path / "dir.sqlite")
    (tmp_path / "garbage.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="file is not a database"):
        SettingsDb(tmp_path / "garbage.sqlite")


def test_an_upgrade_imports_once_and_a_fresh_install_never(tmp_path: Path) -> None:
    assert not written_by_an_older_bridge(tmp_path / "none.sqlite")
    fresh = SettingsDb(tmp_path / "fresh.settings.sqlite", upgrade=False)
    assert not fresh.load().import_legacy

    journal = tmp_path / "journal.sqlite"
    write_older_journal(journal)
    assert written_by_an_older_bridge(journal)
    upgraded = SettingsDb(tmp_path / "journal.settings.sqlite", upgrade=written_by_an_older_bridge(journal))
    assert upgraded.load().import_legacy
    opened = Journal(journal)
    assert written_by_an_older_bridge(journal)  # opening alone does not mark it (a start may still fail)
    opened.mark_ours()  # once the settings store exists
    opened.close()
    assert not written_by_an_older_bridge(journal)
    # Until the import is done, every start tries it (a start without the broker cannot).
    assert SettingsDb(tmp_path / "journal.settings.sqlite").load().import_legacy
    upgraded.imported()
    upgraded.commit()
    assert not SettingsDb(tmp_path / "journal.settings.sqlite").load().import_legacy


def test_a_deleted_settings_file_beside_a_new_journal_imports_nothing(tmp_path: Path) -> None:
    # What a hostile client could leave retained must not come in through a store reset by hand.
    journal = tmp_path / "journal.sqlite"
    opened = Journal(journal)
    opened.mark_ours()
    opened.close()
    assert not SettingsDb(tmp_path / "s.sqlite", upgrade=written_by_an_older_bridge(journal)).load().import_legacy


def test_ten_thousand_rows_load_in_one_go(tmp_path: Path) -> None:
    db = SettingsDb(tmp_path / "s.sqlite")
    for i in range(10_000):
        db.put(f"{i:08x}-9305-4a01-9c51-092205123945", {"count": 2}, f"{i:08x}-9305-4a01-9c51-092205123945")
    db.commit()
    db.close()
    started = time.perf_counter()
    stored = SettingsDb(tmp_path / "s.sqlite").load()
    assert len(stored.devices) == 10_000
    assert time.perf_counter() - started < 2.0  # ~30 ms here; generous for a loaded CI machine


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_underneath_is_written_again(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite"
    db = SettingsDb(path)
    db.put(GUID, {"count": 4}, "truck-12")
    db.queue("van-3", {"count": 2})
    db.commit()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        path.write_bytes(b"someone else's file")
    with caplog.at_level(logging.ERROR):
        db.commit()  # nothing new to write: the check alone
    assert f"was {how}" in caplog.text
    again = SettingsDb(path).load()
    assert again.devices[GUID].choices == {"count": 4}
    assert [c.device for c in again.queued] == ["van-3"]
    if how == "replaced":
        assert len(list(tmp_path.glob("s.sqlite.replaced-*"))) == 1
