"""Per-device settings over MQTT: `<base>/<id>/capture/settings/set` in, `<base>/<id>/capture/settings` out.

What users chose lives in the bridge's own store (`SettingsRecord`, a SQLite file no MQTT client
can write), read once at start; the broker only gets copies, each device's retained
`capture/settings`, which the bridge never reads back. Settings belong to the device (its GUID),
whatever topic id a change came on. A change waits its turn behind the commands that arrived
before it (it is kept durably meanwhile), then costs one upsert.

Where a device's settings are published (retained): on each configured id of its GUID; for a
GUID-only device, on the GUID topic id it was last changed through (a change through another
spelling moves it there and clears the old one). A change through any other topic id also gets
a copy there, not retained, so nothing is left behind on topics the bridge does not own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from bridge.config import Config
from bridge.core import topics
from bridge.core.devices import DEVICE_ID_RE, GUID_RE
from bridge.core.errors import InvalidCommand
from bridge.core.messages import Route
from bridge.core.settings import (
    MAX_PROBLEMS_LISTED,
    Settings,
    SettingsRecord,
    SettingsStore,
    StoredSettings,
    StoreError,
    encode,
    parse_settings,
    parse_settings_payload,
)
from bridge.features.base import Bus, Feature, Publish

log = logging.getLogger("bridge.settings")

STORE_RETRY = 1.0  # seconds between attempts to write a store that failed
STORE_CHECK = 2.0  # seconds between commits while nothing changes (a file deleted underneath is noticed)


class DeviceSettings(Feature):
    """The settings store's MQTT face."""

    def __init__(self, config: Config, publish: Publish, store: SettingsStore, record: SettingsRecord) -> None:
        self._send = publish
        self.store = store
        self._record = record
        self._base = config.mqtt.base_topic
        self._guid_topic_ids = config.bridge.guid_topic_ids
        self._max_guids = config.bridge.max_guid_settings
        self._topics: dict[str, str] = {}  # key -> the topic id its settings are retained on
        self._guids: set[str] = set()  # GUID-only devices with settings (capped)
        self._stale: list[str] = []  # topic ids whose retained settings are no longer ours: cleared at ready
        self._cap_warned = False
        self._ready = False
        self._store_ok = True
        self._commit_soon: asyncio.Handle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._bus: Bus | None = None
        stored = record.load()
        self.import_pending = stored.import_legacy
        self._queued = stored.queued
        self._restore(stored)

    # --- start-up -------------------------------------------------------------------

    def _restore(self, stored: StoredSettings) -> None:
        problems = 0
        for key, row in stored.devices.items():
            if not self._accepted(key):
                log.info("forgetting the settings of %s: no longer a device of this bridge", key[:80])
                self._record.put(key, {}, "")
                self._stale.append(row.topic)
                continue
            kept: Settings = {}
            for field, value in row.choices.items():
                try:
                    kept.update(parse_settings({field: value}, self.store.limits))
                except InvalidCommand as exc:  # a newer config's limits refuse it
                    problems += 1
                    if problems <= MAX_PROBLEMS_LISTED:
                        log.warning("stored settings of %s: %s (dropped)", key, exc.message)
            self.store.set(key, kept)
            home = self._home(key, row.topic)
            if home != row.topic:
                self._stale.append(row.topic)
            self._keep(key, home, write=home != row.topic or self.store.choices(key) != row.choices)
        if problems > MAX_PROBLEMS_LISTED:
            log.warning("stored settings: %d more problems (dropped)", problems - MAX_PROBLEMS_LISTED)
        self._schedule_commit()

    def routes(self) -> list[Route]:
        # Keeps its place among held commands: a held capture must not run with settings sent after it.
        return [Route(topics.settings_set_filter(self._base), self.on_settings_set, ordered=True)]

    def attach(self, bus: Bus) -> None:
        self._bus = bus
        bus.commit_with(self.flush)
        bus.on_ready(self.on_ready)
        bus.on_connected(self.on_reconnected)
        # Changes acknowledged last run that had not had their turn yet: first, before this run's.
        for change in self._queued:
            self._in_order(change.id, change.device, change.partial)
        self._queued = []

    def on_ready(self) -> None:
        """The start-up is over: clear what is no longer ours, publish every device's settings."""
        if self._ready:
            return
        self._ready = True
        for device in dict.fromkeys(self._stale):
            if DEVICE_ID_RE.match(device):
                self._send(topics.settings_topic(self._base, device), b"", qos=1, retain=True)
        self._stale = []
        self._publish_all()

    def on_reconnected(self) -> None:
        """Connected again: publish what a broker that lost its retained messages needs."""
        if self._ready:
            self._publish_all()

    # --- changes --------------------------------------------------------------------

    def on_settings_set(self, topic: str, payload: bytes, retained: bool) -> None:
        """`<base>/<id>/capture/settings/set`: validate, keep durably, apply in its turn."""
        device = topics.device_of_settings_set(topic, self._base)
        if device is None:
            return
        if retained:
            # Replayed at every start, a retained change would undo every later one.
            log.warning("ignored a retained settings change on %s (publish settings changes without retain)",
                        topic, extra={"device": device})
            return
        key = self.store.key_of(device)
        if key is None:
            log.warning("ignored settings for %r: not a configured device%s", device,
                        " nor a GUID" if self._guid_topic_ids else "", extra={"device": device})
            return
        try:
            partial = parse_settings_payload(payload, self.store.limits)
        except InvalidCommand as exc:
            log.warning("settings for %s not changed: %s", device, exc.message, extra={"device": device})
            # Published again so a UI that showed the refused value goes back to the real one.
            self._publish_device(key, device)
            return
        self._in_order(self._record.queue(device, partial), device, partial)
        self._schedule_commit()

    def _in_order(self, change_id: int, device: str, partial: Settings) -> None:
        if self._bus is None:
            self._apply(change_id, device, partial)
        else:
            self._bus.in_order(lambda: self._apply(change_id, device, partial))

    def _apply(self, change_id: int, device: str, partial: Mapping[str, Any]) -> None:
        """Its turn: one upsert, then the device's settings are published."""
        self._record.applied(change_id)
        self._schedule_commit()
        key = self.store.key_of(device)
        if key is None:
            return  # queued last run for a device this config no longer has
        try:
            partial = parse_settings(partial, self.store.limits)  # a queued one may meet newer limits
        except InvalidCommand as exc:
            log.warning("settings for %s not changed: %s", device, exc.message, extra={"device": device})
            self._publish_device(key, device)
            return
        if self._refused(key, device):
            self._publish_device(key, device)
            return
        changed = self.store.set(key, self.store.merged(key, partial))
        before = self._topics.get(key)
        self._keep(key, self._home(key, device))
        after = self._topics.get(key)
        if before is not None and before != after:
            self._send(topics.settings_topic(self._base, before), b"", qos=1, retain=True)  # moved or gone
        if changed:
            log.info("settings of %s are now %s", device, encode(self.store.current_of(key)).decode(),
                     extra={"device": device})
        self._publish_device(key, device)

    def _refused(self, key: str, device: str) -> bool:
        """A new GUID-only device past `bridge.max_guid_settings` (one WARNING a run, the rest DEBUG)."""
        if self.store.configured(key) or key in self._guids or len(self._guids) < self._max_guids:
            return False
        level = logging.DEBUG if self._cap_warned else logging.WARNING
        self._cap_warned = True
        log.log(level, "settings for %s refused: %d GUID-only devices have settings already "
                "(bridge.max_guid_settings); configure it under devices, or raise the limit",
                device, len(self._guids), extra={"device": device})
        return True

    def import_legacy(self, choices: Mapping[str, Settings]) -> int:
        """Choices from the legacy broker memory, under whatever this store has; returns how many devices."""
        imported = 0
        for key, older in choices.items():
            if self._refused(key, key):
                continue
            self.store.set(key, self.store.beneath(key, older))
            self._keep(key, self._topics.get(key) or self._home(key, key))
            imported += 1
        self._schedule_commit()
        return imported

    # --- bookkeeping ----------------------------------------------------------------

    def _accepted(self, key: str) -> bool:
        """A stored key is still a device of this bridge."""
        return bool(GUID_RE.match(key)) and key == key.lower() and (
            self.store.configured(key) or self._guid_topic_ids)

    def _home(self, key: str, used: str) -> str:
        """The topic id a device's settings are retained on."""
        ids = self.store.ids_of(key)
        if ids:
            return ids[0]
        return used if used.lower() == key else key

    def _keep(self, key: str, home: str, *, write: bool = True) -> None:
        """Write the device's row (or remove it when it has no choices left)."""
        choices = self.store.choices(key)
        if choices:
            self._topics[key] = home
            if not self.store.configured(key):
                self._guids.add(key)
        else:
            self._topics.pop(key, None)
            self._guids.discard(key)
        if write:
            self._record.put(key, dict(choices), home)

    # --- publishing -----------------------------------------------------------------

    def _publish_device(self, key: str, used: str | None = None, *, bulk: bool = False) -> None:
        payload = encode(self.store.current_of(key))
        homes = self.store.ids_of(key) or ([self._topics[key]] if key in self._topics else [])
        for device in homes:
            self._send(topics.settings_topic(self._base, device), payload, qos=1, retain=True, bulk=bulk)
        if used is not None and used not in homes:
            self._send(topics.settings_topic(self._base, used), payload, qos=1, retain=False)

    def _publish_all(self) -> None:
        # Bulk: thousands of devices must not hold commands back while the broker takes them.
        for key in dict.fromkeys([*self.store.configured_keys(), *self._guids]):
            self._publish_device(key, bulk=True)

    # --- durability -----------------------------------------------------------------

    def _schedule_commit(self) -> None:
        if self._commit_soon is not None:
            return
        try:
            self._commit_soon = asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop (a unit test, or before start): commit now
            self.flush()

    def flush(self) -> bool:
        """Commit the store (before settings changes are acknowledged); False while it cannot be written."""
        self._commit_soon = None
        try:
            self._record.commit()
        except StoreError as exc:
            if self._store_ok:
                log.error("settings store: %s; not acknowledging messages until it can be written, retrying "
                          "every %.0fs", exc, STORE_RETRY)
            self._store_ok = False
            with contextlib.suppress(RuntimeError):
                self._commit_soon = asyncio.get_running_loop().call_later(STORE_RETRY, self.flush)
            return False
        if not self._store_ok:
            self._store_ok = True
            log.warning("settings store writable again")
        return True

    def start(self) -> None:
        self._watch = asyncio.get_running_loop().call_later(STORE_CHECK, self._check)

    def _check(self) -> None:
        if self._store_ok:
            self.flush()
        self._watch = asyncio.get_running_loop().call_later(STORE_CHECK, self._check)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._commit_soon is not None:
            self._commit_soon.cancel()
            self._commit_soon = None
