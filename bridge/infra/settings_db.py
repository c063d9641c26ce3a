"""The settings users chose, kept in a small SQLite (WAL) file of the bridge's own.

No MQTT client can write here: this is the authority, and the broker only gets copies (each
device's retained `capture/settings`). One row per device, keyed by its GUID in lower case;
a change is one upsert. Changes that must wait their turn (behind held commands) are kept in
`queued` from the moment they arrive, so one acknowledged to the broker is never lost, even
if the bridge stops before its turn. Writes collect in memory and `commit()` applies them in
one transaction; the bridge commits before it acknowledges a settings change, and once per
event-loop pass. `synchronous=NORMAL` in WAL mode, like the journal: a killed process loses
nothing committed; a power cut may lose the last commits.

The file lives beside the command journal (`Config.settings_file()`), and is used whether or
not the journal is on. `meta.state` says whether the bridge still has to import the settings
an older bridge kept retained on the broker (see `bridge/features/legacy_settings.py`): set
once, when the file is created, from whether the journal file of an older bridge is there
(`journal.written_by_an_older_bridge`), and cleared when the import is over.

A file deleted or replaced underneath (a clean-up script, a restored backup) is noticed at
the next commit (the bridge commits at least every 2 s) and written again, with an ERROR,
from the copy this process holds of every row (a foreign file is moved aside).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path

from bridge.core.settings import QueuedChange, Settings, StoredDevice, StoredSettings, StoreError
from bridge.infra.sqlite_file import identity, set_aside
from bridge.infra.sqlite_file import reason as _reason

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS settings (device TEXT PRIMARY KEY, choices TEXT NOT NULL, topic TEXT NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS queued (id INTEGER PRIMARY KEY, device TEXT NOT NULL, partial TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
log = logging.getLogger("bridge.settings")

READY = "ready"
IMPORT_LEGACY = "import-legacy"


def _object(text: str) -> Settings:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


def read_choices(path: Path) -> dict[str, Settings]:
    """What users chose, per device key, read without writing (the `capture` CLI beside a running bridge).

    No file, or one that cannot be read, is no choices: the command then uses the config's defaults.
    """
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT device, choices FROM settings").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    found: dict[str, Settings] = {}
    for key, choices in rows:
        with contextlib.suppress(ValueError, TypeError):
            found[str(key)] = _object(str(choices))
    return found


class SettingsDb:
    """The durable settings store (implements `bridge.core.settings.SettingsRecord`)."""

    def __init__(self, path: Path | str, *, upgrade: bool = False) -> None:
        """`upgrade`: the journal file of an older bridge is there (asked before the journal is opened)."""
        self._path = str(path)
        self._puts: dict[str, tuple[str, str] | None] = {}  # key -> (choices, topic); None: delete
        self._queued: dict[int, tuple[str, str]] = {}  # not committed yet
        self._applied: list[tuple[int]] = []
        self._state: str | None = None  # to write
        self.ok = True  # the last commit worked
        # What is committed, to write again into a file deleted or replaced underneath.
        self._rows: dict[str, tuple[str, str]] = {}
        self._waiting: dict[int, tuple[str, str]] = {}
        self._db, self._identity = self._open(IMPORT_LEGACY if upgrade else READY)
        try:
            rows = self._db.execute("SELECT device, choices, topic FROM settings")  # the one read at start
            self._rows = {str(k): (str(c), str(t)) for k, c, t in rows}
            queued = self._db.execute("SELECT id, device, partial FROM queued")
            self._waiting = {int(i): (str(d), str(p)) for i, d, p in queued}
            row = self._db.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
        except (sqlite3.Error, ValueError) as exc:
            raise StoreError(f"cannot read {self._path}: {_reason(exc)}") from None
        self._state_now = str(row[0])
        self._next_id = max(self._waiting, default=0) + 1

    def _open(self, state: str) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
        """Open (or create, with `state`) the file; StoreError naming it if that fails."""
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            # Only the event-loop thread touches it; autocommit, transactions are ours (see commit).
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {self._path}: {_reason(exc)}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                db.execute(statement)
            # Created now: an upgrade imports the older bridge's broker memory once; a fresh install never.
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('state', ?)", (state,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise StoreError(f"cannot open {self._path}: {_reason(exc)}") from None
        return db, self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        return identity(self._path)

    @property
    def path(self) -> str:
        """Where the settings live."""
        return self._path

    def load(self) -> StoredSettings:
        """Every device's row and the changes still queued (a row that cannot be read is skipped)."""
        stored = StoredSettings(import_legacy=self._state_now == IMPORT_LEGACY)
        for key, (choices, topic) in self._rows.items():
            with contextlib.suppress(ValueError, TypeError):
                stored.devices[key] = StoredDevice(_object(choices), topic)
        for change_id in sorted(self._waiting):
            device, partial = self._waiting[change_id]
            with contextlib.suppress(ValueError, TypeError):
                stored.queued.append(QueuedChange(change_id, device, _object(partial)))
        return stored

    def put(self, key: str, choices: Settings, topic: str) -> None:
        """Keep a device's choices (none: its row goes); durable at the next commit."""
        self._puts[key] = (json.dumps(choices, separators=(",", ":")), topic) if choices else None

    def queue(self, device: str, partial: Settings) -> int:
        """Keep a change that waits for its turn; returns its id (durable at the next commit)."""
        change_id = self._next_id
        self._next_id += 1
        self._queued[change_id] = (device, json.dumps(partial, separators=(",", ":")))
        return change_id

    def applied(self, change_id: int) -> None:
        """A queued change had its turn: forget it (never written at all if that was in the same commit)."""
        if self._queued.pop(change_id, None) is None:
            self._applied.append((change_id,))

    def imported(self) -> None:
        """The one-time import of the legacy broker memory is over."""
        self._state = READY

    @property
    def dirty(self) -> bool:
        """Writes wait for a commit."""
        return bool(self._puts or self._queued or self._applied or self._state)

    def commit(self) -> None:
        """Apply every write since the last commit in one transaction; StoreError (writes kept) if it fails."""
        try:
            self._check()
            if self.dirty:
                self._write(self._db, self._puts, self._queued, self._applied, self._state)
        except StoreError:
            self.ok = False
            raise
        for key, put in self._puts.items():
            if put is None:
                self._rows.pop(key, None)
            else:
                self._rows[key] = put
        self._waiting.update(self._queued)
        for (change_id,) in self._applied:
            self._waiting.pop(change_id, None)
        self._state_now = self._state or self._state_now
        self._puts, self._queued, self._applied, self._state = {}, {}, [], None
        self.ok = True

    def _write(self, db: sqlite3.Connection, puts: dict[str, tuple[str, str] | None],
               queued: dict[int, tuple[str, str]], applied: list[tuple[int]], state: str | None) -> None:
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO settings (device, choices, topic) VALUES (?, ?, ?) ON CONFLICT(device)"
                           " DO UPDATE SET choices = excluded.choices, topic = excluded.topic",
                           [(key, put[0], put[1]) for key, put in puts.items() if put is not None])
            db.executemany("DELETE FROM settings WHERE device = ?",
                           [(key,) for key, put in puts.items() if put is None])
            db.executemany("INSERT INTO queued (id, device, partial) VALUES (?, ?, ?)",
                           [(i, device, partial) for i, (device, partial) in queued.items()])
            db.executemany("DELETE FROM queued WHERE id = ?", applied)
            if state is not None:
                db.execute("UPDATE meta SET value = ? WHERE key = 'state'", (state,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StoreError(f"cannot write {self._path}: {_reason(exc)}") from None

    def _check(self) -> None:
        """Write everything committed again into a fresh file if ours was deleted or replaced."""
        if self._path == ":memory:" or self._file_identity() == self._identity:
            return
        try:
            what = set_aside(self._path)
        except OSError as exc:
            raise StoreError(f"cannot move the foreign file {self._path} aside: {_reason(exc)}") from None
        with contextlib.suppress(sqlite3.Error):
            self._db.close()  # checkpoints into the orphan and removes its -wal/-shm
        self._db, self._identity = self._open(self._state_now)
        self._write(self._db, dict(self._rows), dict(self._waiting), [], self._state_now)
        log.error("settings file %s was %s; wrote again the settings of the %d device(s) this process holds",
                  self._path, what, len(self._rows))

    def close(self) -> None:
        """Commit what can be committed and close."""
        try:
            self.commit()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
