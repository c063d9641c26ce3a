"""The one-time import of the settings an older bridge kept on the broker.

Bridges before the local settings store kept every device's choices in one retained JSON
object, `<base>/bridge/settings`. On the first start after such an upgrade (the store is new and
the journal file of the older bridge is there, see bridge/infra/settings_db.py), that memory is
read once, during the start-up window, under any change queued meanwhile; then it is cleared on
the broker and the store is marked done. After that the bridge unsubscribes from it at every
connection (a persistent session keeps the older bridge's subscription), so nothing any client
publishes there reaches it or can change what users chose. A fresh install never reads it.

The memory is input like any other: refused unparsed past MAX_LEGACY_BYTES, only configured
devices and (capped) GUID devices kept, invalid fields dropped, at most 20 lines logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bridge.config import Config
from bridge.core import topics
from bridge.core.legacy_settings import parse_legacy
from bridge.core.messages import Route
from bridge.core.settings import SettingsRecord
from bridge.features.base import Bus, Feature, Publish
from bridge.features.settings import DeviceSettings

log = logging.getLogger("bridge.settings")


class LegacySettings(Feature):
    """Reads `<base>/bridge/settings` once when upgrading; nothing otherwise."""

    def __init__(self, config: Config, publish: Publish, settings: DeviceSettings, record: SettingsRecord,
                 synced: Callable[[], bool]) -> None:
        self._publish = publish
        self._settings = settings
        self._record = record
        self._synced = synced  # the start-up gate opened on this run's own marker
        self._topic = topics.bridge_settings_topic(config.mqtt.base_topic)
        self._max_guids = config.bridge.max_guid_settings
        self.pending = settings.import_pending

    def routes(self) -> list[Route]:
        # Otherwise unsubscribed: the older bridge's persistent session (or our upgrade run) subscribed to it,
        # and the broker would go on delivering whatever anyone publishes there.
        return [Route(self._topic, self.on_memory, listen=self.pending)]

    def attach(self, bus: Bus) -> None:
        if self.pending:
            bus.on_ready(self.on_ready)

    def on_memory(self, topic: str, payload: bytes, retained: bool) -> None:
        """The retained memory, at start (the gate still holds every settings change that came before it)."""
        if not self.pending or not retained or not payload:
            return
        memory = parse_legacy(payload, self._settings.store, self._max_guids)
        for problem in memory.problems:
            log.warning("legacy settings memory %s: %s (dropped)", topic, problem)
        if memory.dropped > len(memory.problems):
            log.warning("legacy settings memory %s: %d more problems (dropped)", topic,
                        memory.dropped - len(memory.problems))
        imported = self._settings.import_legacy(memory.choices)
        log.info("imported the settings of %d device(s) from %s, the memory of an older bridge; it is cleared "
                 "and never read again (settings now live in the bridge's own store)", imported, topic)
        self._done()
        self._publish(topic, b"", qos=1, retain=True)

    def on_ready(self) -> None:
        """Start-up over: without a memory (and with our own marker back, so none is coming), done too."""
        if self.pending and self._synced():
            log.info("no settings memory of an older bridge on %s: nothing to import", self._topic)
            self._done()
        self.pending = False  # later copies (our own clearing echo included) are never read

    def _done(self) -> None:
        self.pending = False
        self._record.imported()
        self._settings.flush()
