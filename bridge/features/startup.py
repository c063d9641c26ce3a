"""The start-up gate: commands wait until what the broker kept for us has arrived.

After subscribing, the bridge sends itself a marker on `<base>/bridge/sync/<client_id>`.
Retained messages for its subscriptions (the settings users chose) reach it before the marker,
so once the marker is back every command runs with the chosen settings. Commands that arrive
meanwhile are journaled at once (their PUBACK goes out with the next journal commit) and run,
in order, behind the commands the journal took back from the last run.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.config import Config
from bridge.core import topics
from bridge.core.messages import Command, Route
from bridge.features.base import Bus, Feature, Publish
from bridge.infra.journal import JournalEntry
from bridge.service.capture import CaptureService

log = logging.getLogger("bridge")

# How long commands wait at start for the retained settings before running anyway.
SYNC_TIMEOUT = 10.0


class StartupGate(Feature):
    """Holds commands until the marker is back (or SYNC_TIMEOUT), then hands them to the service."""

    def __init__(
        self, config: Config, service: CaptureService, publish: Publish, timeout: float = SYNC_TIMEOUT
    ) -> None:
        self._base = config.mqtt.base_topic
        self._service = service
        self._publish = publish
        self._timeout = timeout
        self._marker = topics.bridge_sync_topic(self._base, config.mqtt.client_id)
        # Held commands and their journal ids; None once open.
        self._held: list[tuple[Command, int | None]] | None = []
        self._replayed: list[JournalEntry] = []
        self._bus: Bus | None = None

    @property
    def is_open(self) -> bool:
        """Commands run as they come."""
        return self._held is None

    def routes(self) -> list[Route]:
        return [Route(self._marker, lambda topic, payload, retained: self.open())]

    def attach(self, bus: Bus) -> None:
        self._bus = bus
        bus.take_commands(self.command)
        bus.on_retained_command(self.retained_command)
        bus.on_connected(self._connected)

    def take_back(self, entries: list[JournalEntry]) -> None:
        """Commands the journal took back from the last run: they run first, once open."""
        self._replayed.extend(entries)

    def start(self) -> None:
        # Without a broker (or the marker) for that long, run them with the settings known.
        asyncio.get_running_loop().call_later(self._timeout, self._overdue)

    def command(self, command: Command) -> None:
        """A live command: run it, or hold it (journaled now) until open."""
        if self._held is None:
            self._service.submit(command)
        else:
            self._held.append((command, self._service.record(command)))

    def retained_command(self, device: str, payload: bytes) -> None:
        """Drop held copies of a retained command.

        On 3.1.1 (and brokers that do not keep the flag) a retained command published while we were
        down reaches our resumed session as a live message, before the retained copy our SUBSCRIBE
        brings. Both arrive while commands are held at start: the live copy is the same stale command.
        """
        if not self._held:
            return
        kept = [(c, jid) for c, jid in self._held if c.device != device or c.payload != payload]
        for c, jid in self._held:
            if c.device == device and c.payload == payload:
                self._service.discard(jid)
        if len(kept) < len(self._held):
            log.warning("dropped %d queued copy(ies) of the retained command on %s: retained commands are never "
                        "executed (the broker queued it for our session without its retain flag)",
                        len(self._held) - len(kept), topics.command_topic(self._base, device), extra={"device": device})
            self._held = kept

    def open(self) -> None:
        """The marker is back (or overdue, or we stop): run what waited, oldest first."""
        if self._held is None:
            return
        if self._bus is not None:
            self._bus.ready()
        waiting, self._held = self._held, None
        if self._replayed:
            self._service.replay(self._replayed)  # older than anything held: first
            self._replayed = []
        for command, journal_id in waiting:
            self._service.submit(command, journal_id)

    def _connected(self) -> None:
        if self._held is not None:
            self._publish(self._marker, b"sync", qos=1)
            asyncio.get_running_loop().call_later(self._timeout, self._overdue)

    def _overdue(self) -> None:
        if self._held is not None:
            log.warning("the broker did not echo %s within %.0fs (down? ACL?); running commands with the "
                        "settings known", self._marker, self._timeout)
            self.open()

    def stop(self) -> None:
        # Already acknowledged to the broker: hand them to the service (and its journal) now.
        if self._held:
            self.open()
