"""The seam every feature plugs into: a `Feature` registers routes and listens on the `Bus`.

The MQTT adapter and the service raise events on the bus (a connection, a command, a state);
features subscribe to the ones they need in `attach`. Adding a feature is one new module and one
line in the list `bootstrap.features` returns; nothing else changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from bridge.core.messages import Command, Route

log = logging.getLogger("bridge")

Hook = Callable[[], None]


class Publish(Protocol):
    """The adapter's publish (QoS 1 for features); False when the topic cannot be published."""

    def __call__(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int | None = ...,
        retain: bool = ...,
        on_acked: Callable[[], None] | None = ...,
        bulk: bool = ...,
    ) -> bool: ...


class Bus:
    """Who listens to what. Built empty first; features and the service register in bootstrap."""

    def __init__(self) -> None:
        self.routes: list[Route] = []  # read by the adapter when it starts
        self._on_command: Callable[[Command], None] | None = None
        self._on_retained: list[Callable[[str, bytes], None]] = []
        self._on_connected: list[Hook] = []
        self._on_disconnected: list[Hook] = []
        self._on_listening: list[Callable[[bool], None]] = []
        self._on_ready: list[Hook] = []
        self._on_state: list[Callable[[str, bytes], None]] = []
        self._commits: list[Callable[[], bool]] = []
        self._hold: Callable[[Hook], None] | None = None

    # --- registration ---------------------------------------------------------------

    def take_commands(self, handler: Callable[[Command], None]) -> None:
        """The one receiver of commands (the start-up gate, which hands them to the service)."""
        self._on_command = handler

    def hold_with(self, hold: Callable[[Hook], None]) -> None:
        """Who keeps ordered work in its place among held commands (the start-up gate)."""
        self._hold = hold

    def commit_with(self, commit: Callable[[], bool]) -> None:
        """What makes received messages durable before they are acknowledged (the journal, the settings)."""
        self._commits.append(commit)

    def on_retained_command(self, hook: Callable[[str, bytes], None]) -> None:
        """A retained (stale) command arrived: `hook(device, payload)`."""
        self._on_retained.append(hook)

    def on_connected(self, hook: Hook) -> None:
        """Every accepted connection, after the subscriptions are asked for."""
        self._on_connected.append(hook)

    def on_disconnected(self, hook: Hook) -> None:
        """Every lost connection."""
        self._on_disconnected.append(hook)

    def on_listening(self, hook: Callable[[bool], None]) -> None:
        """The bridge hears commands on this connection (True), or will not on this broker (False)."""
        self._on_listening.append(hook)

    def on_ready(self, hook: Hook) -> None:
        """Once per run: what the broker kept for us has arrived; commands run from now on."""
        self._on_ready.append(hook)

    def on_state(self, hook: Callable[[str, bytes], None]) -> None:
        """Every state the bridge publishes: `hook(device, payload)`."""
        self._on_state.append(hook)

    # --- events ---------------------------------------------------------------------

    def command(self, command: Command) -> None:
        """A live command from MQTT."""
        if self._on_command is not None:
            self._on_command(command)

    def in_order(self, work: Hook) -> None:
        """Run `work` now, or after the commands held before it (a settings change at start-up)."""
        if self._hold is not None:
            self._hold(work)
        else:
            work()

    def commit(self) -> bool:
        """Before acknowledging: True when everything received so far is durable."""
        durable = True
        for commit in self._commits:
            durable = commit() and durable  # each one commits, even after another failed
        return durable

    def retained_command(self, device: str, payload: bytes) -> None:
        """A retained command that was not executed."""
        self._emit(self._on_retained, device, payload)

    def connected(self) -> None:
        """The adapter connected."""
        self._emit(self._on_connected)

    def disconnected(self) -> None:
        """The adapter lost its connection."""
        self._emit(self._on_disconnected)

    def listening(self, yes: bool) -> None:
        """The command subscription is granted (and a shared group verified), or found deaf."""
        self._emit(self._on_listening, yes)

    def ready(self) -> None:
        """The start-up is over."""
        self._emit(self._on_ready)

    def state(self, device: str, payload: bytes) -> None:
        """A state was published."""
        self._emit(self._on_state, device, payload)

    @staticmethod
    def _emit(hooks: Sequence[Callable[..., None]], *args: object) -> None:
        for hook in hooks:
            try:
                hook(*args)
            except Exception:  # one feature's bug must not stop the others or the MQTT loop
                log.exception("a feature's hook failed")


class Feature:
    """A plug-in: its routes, the events it listens to, and background work. Defaults do nothing."""

    def routes(self) -> Sequence[Route]:
        """Topics to subscribe to, with their handlers."""
        return ()

    def attach(self, bus: Bus) -> None:
        """Subscribe to the bus's events."""

    def start(self) -> None:
        """The bridge starts: timers and background tasks (most features have none)."""

    def stop(self) -> None:
        """Shutting down: cancel timers."""


def register(bus: Bus, features: Sequence[Feature]) -> None:
    """Wire each feature's routes and hooks to the bus, in order (the order of subscription)."""
    for feature in features:
        bus.routes.extend(feature.routes())
        feature.attach(bus)
