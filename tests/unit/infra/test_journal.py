"""The journal's own faults on real SQLite files: a failed commit, a deleted or replaced file.

A full database is a real `SQLITE_FULL`, made with the connection's `max_page_count`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bridge.infra.journal import Journal, JournalError


def test_a_failed_commit_is_rolled_back_kept_and_applied_later(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal._db.execute("PRAGMA max_page_count = 3")  # the connection's own cap: SQLITE_FULL soon
    big = b"x" * 20_000
    entry = journal.add("d", big, None, None)
    with pytest.raises(JournalError, match="full"):
        journal.commit()
    assert journal.unfinished() == []  # rolled back: nothing half-written
    journal._db.execute("PRAGMA max_page_count = 100000")  # space is back
    journal.commit()
    assert [e.id for e in journal.unfinished()] == [entry]
    journal.answered(entry, b"state")
    journal.done([entry])
    journal.commit()
    assert journal.unfinished() == []


def test_a_deleted_journal_file_is_recreated_with_what_it_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    ids = [journal.add("d", f'{{"request_id": "{i}"}}'.encode(), None, None) for i in range(50)]
    journal.commit()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR):
        journal.check()
    assert "was deleted" in caplog.text
    assert path.exists()
    journal.close()
    assert [e.id for e in Journal(path).unfinished()] == ids


def test_a_replaced_journal_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.add("d", b"{}", None, None)
    journal.commit()
    other = tmp_path / "other"
    other.write_text("not ours")
    os.replace(other, path)
    with caplog.at_level(logging.ERROR):
        journal.commit()
    assert "replaced" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if ".replaced-" in p.name]
    journal.close()
    assert len(Journal(path).unfinished()) == 1


def test_the_sent_mark_is_durable_and_survives_a_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    first = journal.add("d", b"{}", None, None)
    second = journal.add("d", b"{}", None, None)
    journal.sending(first)
    assert [e.sent for e in journal.unfinished()] == []  # nothing before the commit
    journal.commit()
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    assert [(e.id, e.sent) for e in again.unfinished()] == [(first, True), (second, False)]


def test_a_journal_of_an_older_bridge_gets_the_sent_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE commands (id INTEGER PRIMARY KEY, device TEXT NOT NULL, payload BLOB NOT NULL,"
               " response_topic TEXT, correlation BLOB, state BLOB)")
    db.execute("INSERT INTO commands VALUES (7, 'truck-12', '{}', NULL, NULL, NULL)")
    db.commit()
    db.close()
    journal = Journal(path)
    [entry] = journal.unfinished()
    assert (entry.id, entry.sent) == (7, False)  # never marked: it was not being sent
    journal.sending(7)
    journal.commit()
    assert journal.unfinished()[0].sent


def test_a_re_created_file_keeps_the_sent_marks(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    entry = journal.add("d", b"{}", None, None)
    journal.sending(entry)
    journal.commit()
    os.remove(path)
    journal.commit()  # notices the deleted file and writes what it holds to a fresh one
    assert [(e.id, e.sent) for e in Journal(path).unfinished()] == [(entry, True)]
