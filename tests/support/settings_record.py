"""Settings store helpers: an in-memory `SettingsRecord` for feature unit tests, an older journal, peak RSS."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

from bridge.core.settings import QueuedChange, Settings, StoredDevice, StoredSettings, StoreError


class FakeRecord:
    """Keeps rows and queued changes in dicts; `commit` copies the pending writes into `committed`."""

    def __init__(self, stored: StoredSettings | None = None) -> None:
        stored = stored or StoredSettings()
        self.committed = copy.deepcopy(stored)
        self._devices: dict[str, StoredDevice | None] = {}
        self._queued: dict[int, QueuedChange | None] = {}
        self._imported = False
        self._next = max((c.id for c in stored.queued), default=0) + 1
        self.fail = False  # commit raises StoreError (a full disk)
        self.commits = 0

    def load(self) -> StoredSettings:
        return copy.deepcopy(self.committed)

    def put(self, key: str, choices: Settings, topic: str) -> None:
        self._devices[key] = StoredDevice(dict(choices), topic) if choices else None

    def queue(self, device: str, partial: Settings) -> int:
        change_id = self._next
        self._next += 1
        self._queued[change_id] = QueuedChange(change_id, device, dict(partial))
        return change_id

    def applied(self, change_id: int) -> None:
        self._queued[change_id] = None

    def imported(self) -> None:
        self._imported = True

    def commit(self) -> None:
        if self.fail:
            raise StoreError("cannot write settings.sqlite: database or disk is full")
        self.commits += 1
        for key, row in self._devices.items():
            if row is None:
                self.committed.devices.pop(key, None)
            else:
                self.committed.devices[key] = row
        queued = {c.id: c for c in self.committed.queued}
        for change_id, change in self._queued.items():
            if change is None:
                queued.pop(change_id, None)
            else:
                queued[change_id] = change
        self.committed = StoredSettings(self.committed.devices, sorted(queued.values(), key=lambda c: c.id),
                                        self.committed.import_legacy and not self._imported)
        self._devices, self._queued = {}, {}

    def choices(self, key: str) -> Settings | None:
        """What is durable for a device."""
        row = self.committed.devices.get(key)
        return None if row is None else row.choices


def write_older_journal(path: Path) -> None:
    """A journal file as a bridge that kept settings on the broker left it (schema, no user_version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE commands (id INTEGER PRIMARY KEY, device TEXT NOT NULL, payload BLOB NOT NULL,"
               " response_topic TEXT, correlation BLOB, state BLOB, sent INTEGER NOT NULL DEFAULT 0)")
    db.commit()
    db.close()


def peak_rss_mb(pid: int) -> float:
    """The highest resident memory a live process has had (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
