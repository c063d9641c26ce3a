"""A small SQLite (WAL) journal that makes accepted commands survive a crash.

A command is written here before the broker gets its PUBACK, marked `sent` before the
first byte of its Instruction goes to the cloud, its final state is written here before
it is published, and the row is deleted once the broker has acknowledged that state.
Writes collect in memory and are applied in one transaction by `commit()`, which the
caller runs once per event-loop pass, before it sends the PUBACKs, Instructions and
states that depend on them: one commit per burst instead of one per write (a commit
per write cost ~180 us of CPU per command). At start, rows with a state have it published again, rows
marked `sent` are answered as an unknown outcome (never sent twice), and the rest run.

A commit that fails (disk full, I/O error, the file locked by someone else) is
rolled back and its writes are kept, so the next `commit()` applies them again:
nothing is half-written and nothing is forgotten. The caller decides what to do
meanwhile (the service stops acknowledging and taking commands).

A journal file deleted or replaced underneath us (a clean-up script, a restored
backup) is noticed at the next commit or `check()`: the rows this process still
holds are written to a fresh file at the same path.

`synchronous=NORMAL` in WAL mode survives a killed process (SIGKILL); only a
power cut can lose the last commits (docs/reliability.md says what that costs and why).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.infra.sqlite_file import identity, set_aside
from bridge.infra.sqlite_file import reason as _reason

log = logging.getLogger("bridge.journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    payload BLOB NOT NULL,
    response_topic TEXT,
    correlation BLOB,
    state BLOB,
    sent INTEGER NOT NULL DEFAULT 0
)
"""
# Journals written before the `sent` mark existed get the column (their rows: not sent).
MIGRATION = "ALTER TABLE commands ADD COLUMN sent INTEGER NOT NULL DEFAULT 0"
# PRAGMA user_version of a journal written by a bridge that keeps settings in its own file; older
# bridges left 0 (and kept settings retained on the broker: see bridge/infra/settings_db.py).
VERSION = 1
SELECT_ALL = "SELECT id, device, payload, response_topic, correlation, state, sent FROM commands ORDER BY id"
INSERT_ALL = ("INSERT OR REPLACE INTO commands (id, device, payload, response_topic, correlation, state, sent)"
              " VALUES (?, ?, ?, ?, ?, ?, ?)")


class JournalError(Exception):
    """The journal cannot be opened or written; the message says why, without a traceback."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A command that had not been fully answered when the bridge stopped."""

    id: int
    device: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None
    state: bytes | None
    sent: bool = False  # its Instruction may have reached the cloud


def written_by_an_older_bridge(path: Path) -> bool:
    """A journal file is there, last opened by a bridge that kept settings on the broker."""
    if not path.is_file():
        return False
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return int(db.execute("PRAGMA user_version").fetchone()[0]) < VERSION
        finally:
            db.close()
    except sqlite3.Error:
        return False  # not a journal we can read: no upgrade to make


class Journal:
    """Durable record of accepted, unanswered commands."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._memory = self._path == ":memory:"
        self._inserts: list[tuple[int, str, bytes, str | None, bytes | None]] = []
        self._updates: list[tuple[bytes, int]] = []
        self._deletes: list[tuple[int]] = []
        self._sent: list[tuple[int]] = []
        self._identity: tuple[int, int] | None = None
        self._db = self._open()
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM commands").fetchone()
        self._next_id = int(row[0]) + 1

    def _open(self) -> sqlite3.Connection:
        try:
            if not self._memory:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # Only the event-loop thread touches it; autocommit, transactions are ours (see commit).
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(SCHEMA)
                columns = {row[1] for row in db.execute("PRAGMA table_info(commands)")}
                if "sent" not in columns:
                    db.execute(MIGRATION)
            except BaseException:
                db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open {self._path}: {_reason(exc)}") from None
        self._identity = self._file_identity()
        return db

    def _file_identity(self) -> tuple[int, int] | None:
        return None if self._memory else identity(self._path)

    def mark_ours(self) -> None:
        """Mark the file as written by this version (once its settings store exists: see settings_db.py)."""
        try:
            self._db.execute(f"PRAGMA user_version = {VERSION}")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write {self._path}: {_reason(exc)}") from None

    @property
    def path(self) -> str:
        """Where the journal lives."""
        return self._path

    @property
    def dirty(self) -> bool:
        """Writes wait for a commit."""
        return bool(self._inserts or self._updates or self._deletes or self._sent)

    def add(self, device: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> int:
        """Record an accepted command (durable at the next commit); returns its id."""
        entry_id = self._next_id
        self._next_id += 1
        self._inserts.append((entry_id, device, payload, response_topic, correlation))
        return entry_id

    def sending(self, entry_id: int) -> None:
        """Record that the command's Instruction is about to be sent (commit before sending it)."""
        self._sent.append((entry_id,))

    def answered(self, entry_id: int, state: bytes) -> None:
        """Record the final state (commit before publishing it)."""
        self._updates.append((state, entry_id))

    def done(self, entry_ids: list[int]) -> None:
        """Forget commands whose final state the broker has acknowledged."""
        self._deletes.extend((i,) for i in entry_ids)

    def check(self) -> None:
        """Re-create the file if it was deleted or replaced since we opened it (logged at ERROR)."""
        if self._memory or self._file_identity() == self._identity:
            return
        try:
            rows = self._rows()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal being re-created: {_reason(exc)}") from None
        try:
            what = set_aside(self._path)
        except OSError as exc:
            raise JournalError(f"cannot move the foreign file {self._path} aside: {_reason(exc)}") from None
        # Closing the orphan checkpoints into the deleted inode and removes its -wal/-shm files,
        # which a fresh database at the same path must not pick up.
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db = self._open()
        try:
            self._db.execute("BEGIN")
            self._db.executemany(INSERT_ALL, rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            # The orphan is closed: these rows now live only in the retried writes.
            self._inserts[:0] = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
            self._updates[:0] = [(r[5], r[0]) for r in rows if r[5] is not None]
            self._sent[:0] = [(r[0],) for r in rows if r[6]]
            raise JournalError(f"cannot write the re-created journal: {_reason(exc)}") from None
        log.error("journal file %s was %s; re-created it with the %d unfinished command(s) of this process",
                  self._path, what, len(rows))

    def commit(self) -> None:
        """Make every write since the last successful commit durable, or raise JournalError and keep them."""
        self.check()
        if not self.dirty:
            return
        db = self._db
        try:
            db.execute("BEGIN")
            if self._inserts:
                db.executemany(
                    "INSERT OR REPLACE INTO commands (id, device, payload, response_topic, correlation)"
                    " VALUES (?, ?, ?, ?, ?)",
                    self._inserts,
                )
            if self._updates:
                db.executemany("UPDATE commands SET state = ? WHERE id = ?", self._updates)
            if self._sent:
                db.executemany("UPDATE commands SET sent = 1 WHERE id = ?", self._sent)
            if self._deletes:
                db.executemany("DELETE FROM commands WHERE id = ?", self._deletes)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise JournalError(_reason(exc)) from None
        self._inserts, self._updates, self._deletes, self._sent = [], [], [], []

    def unfinished(self) -> list[JournalEntry]:
        """Every command still open, oldest first."""
        try:
            rows = self._rows()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read {self._path}: {_reason(exc)}") from None
        return [JournalEntry(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6])) for row in rows]

    def _rows(self) -> list[tuple[Any, ...]]:
        """Every row, oldest first (raises sqlite3.Error: callers say what they were doing)."""
        return self._db.execute(SELECT_ALL).fetchall()

    def close(self) -> None:
        """Commit what can be committed and close the database."""
        try:
            self.commit()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
