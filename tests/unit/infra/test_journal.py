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
