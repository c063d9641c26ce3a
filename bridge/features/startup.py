"""The start-up gate: commands wait until the retained messages of our subscriptions have arrived.

Settings do not need the broker (they live in the bridge's own store); what does is telling
stale commands apart. On MQTT 3.1.1, and on brokers that drop the flag, a retained command
published while we were down reaches our resumed session as a live message, before the retained
copy our SUBSCRIBE brings; holding commands until then lets that copy drop the queued one.

After subscribing, the bridge sends itself a marker on `<base>/bridge/sync/<client_id>`, carrying
a nonce drawn for this run. Retained messages for its subscriptions reach it before the marker,
so once *its own* marker is back they have all arrived; a marker any other client published
(queued while the bridge was down, or retained) carries no such nonce and opens nothing.
Commands that arrive meanwhile are journaled at once (their PUBACK goes out with the next
journal commit); they and the settings changes that arrive with them then run in arrival
order, behind the commands the journal took back from the last run. Once open, ordered work
still waits behind commands the service parked (the journal could not be written).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from bridge.config import Config
from bridge.core import topics
from bridge.core.messages import Command, Route
from bridge.features.base import Bus, Feature, Publish
from bridge.infra.journal import JournalEntry
from bridge.service.capture import CaptureService

log = logging.getLogger("bridge")

# How long commands wait at start for the broker's retained messages before running anyway.
SYNC_TIMEOUT = 10.0

Held = tuple[Command, int | None] | Callable[[], None]


class StartupGate(Feature):
    """Holds commands (and ordered work) until our marker is back (or SYNC_TIMEOUT), then runs them in order."""

    def __init__(
        self, config: Config, service: CaptureService, publish: Publish, timeout: float = SYNC_TIMEOUT
    ) -> None:
        self._base = config.mqtt.base_topic
        self._service = service
        self._publish = publish
        self._timeout = timeout
        self._marker = topics.bridge_sync_topic(self._base, config.mqtt.client_id)
        self._nonce = secrets.token_hex(16).encode()  # only this run's own marker opens the gate
        # What waits, in arrival order (None: dropped); None once open.
        self._held: list[Held | None] | None = []
        # (device, payload) -> positions in _held: a retained command's queued copies, found in O(1).
        self._copies: dict[tuple[str, bytes], list[int]] = {}
        self._replayed: list[JournalEntry] = []
        self._bus: Bus | None = None
        self.synced = False  # opened on this run's own marker (not on the timeout)

    @property
    def is_open(self) -> bool:
        """Commands run as they come."""
        return self._held is None

    def routes(self) -> list[Route]:
        return [Route(self._marker, self._marker_arrived)]

    def attach(self, bus: Bus) -> None:
        self._bus = bus
        bus.take_commands(self.command)
        bus.hold_with(self.in_order)
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
            return
        self._copies.setdefault((command.device, command.payload), []).append(len(self._held))
        self._held.append((command, self._service.record(command)))

    def in_order(self, work: Callable[[], None]) -> None:
        """Work that must keep its place among held commands (a settings change): in its turn."""
        if self._held is None:
            self._service.in_order(work)  # behind any command the service parked
        else:
            self._held.append(work)

    def retained_command(self, device: str, payload: bytes) -> None:
        """Drop held copies of a retained command.

        On 3.1.1 (and brokers that do not keep the flag) a retained command published while we were
        down reaches our resumed session as a live message, before the retained copy our SUBSCRIBE
        brings. Both arrive while commands are held at start: the live copy is the same stale command.
        """
        if self._held is None:
            return
        positions = self._copies.pop((device, payload), [])
        for position in positions:
            held = self._held[position]
            if isinstance(held, tuple):
                self._service.discard(held[1])
            self._held[position] = None
        if positions:
            log.warning("dropped %d queued copy(ies) of the retained command on %s: retained commands are never "
                        "executed (the broker queued it for our session without its retain flag)",
                        len(positions), topics.command_topic(self._base, device), extra={"device": device})

    def _marker_arrived(self, topic: str, payload: bytes, retained: bool) -> None:
        if payload == self._nonce and not retained:
            self.synced = self._held is not None or self.synced
            self.open()
        else:
            log.warning("ignored a message on %s that this bridge did not send (a forged or stale start-up "
                        "marker)", topic)

    def open(self) -> None:
        """Our marker is back (or overdue, or we stop): run what waited, oldest first."""
        if self._held is None:
            return
        if self._bus is not None:
            self._bus.ready()
        waiting, self._held = self._held, None
        self._copies = {}
        if self._replayed:
            self._service.replay(self._replayed)  # older than anything held: first
            self._replayed = []
        for held in waiting:
            if isinstance(held, tuple):
                self._service.submit(*held)
            elif held is not None:
                self._service.in_order(held)

    def _connected(self) -> None:
        if self._held is not None:
            self._publish(self._marker, self._nonce, qos=1)
            asyncio.get_running_loop().call_later(self._timeout, self._overdue)

    def _overdue(self) -> None:
        if self._held is not None:
            log.warning("the broker did not echo %s within %.0fs (down? ACL?); running held commands now (a "
                        "retained command's queued copy can no longer be told apart)", self._marker, self._timeout)
            self.open()

    def stop(self) -> None:
        # Already acknowledged to the broker: hand them to the service (and its journal) now.
        if self._held:
            self.open()
