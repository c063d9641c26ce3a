"""Home Assistant: MQTT discovery announced (again at every HA birth), clean-up of removed cameras,
and the terminal number the cloud named in this run's answers shown as the camera's serial number.

Nothing read back from the broker (a retained discovery config or state, which any client can
write) changes what the bridge announces about a device.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from bridge.config import Config
from bridge.core.messages import Route
from bridge.features import discovery
from bridge.features.base import Bus, Feature

log = logging.getLogger("bridge.homeassistant")


class Announcer:
    """Home Assistant discovery, announced again on request: coalesced and rate-limited.

    One announcement is in flight at a time (until the broker has acknowledged every message of
    it); requests meanwhile collapse into one more afterwards, and two start at least
    `min_interval` seconds apart. A flapping `homeassistant/status` cannot flood the broker
    or the bridge's publish queue, and the last request is always answered.

    `announce` publishes through `publish` below, which counts what an announcement sends and
    hands it to `send` (the adapter's publish) with an ack hook.
    """

    def __init__(
        self,
        announce: Callable[[], None],
        send: Callable[..., bool],
        *,
        min_interval: float = 5.0,
        give_up: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._announce = announce
        self._send = send
        self._firing = False
        self._min_interval = min_interval
        self._give_up = give_up
        self._clock = clock
        self._in_flight = 0
        self._again = False
        self._started = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self.count = 0

    def request(self) -> None:
        """Announce now, or as soon as the one in flight is through and the interval has passed."""
        if self._timer is not None:
            return
        now = self._clock()
        # Acks lost with a connection are redelivered by paho; the deadline is a safety net only.
        if self._in_flight and now - self._started < self._give_up:
            self._again = True
            return
        wait = self._started + self._min_interval - now
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self._fire)
            return
        self._fire()

    def _fire(self) -> None:
        self._timer = None
        self._again = False
        self._started = self._clock()
        self.count += 1
        self._in_flight = 0  # a given-up announcement's late acks cannot go below zero
        self._firing = True
        try:
            self._announce()
        finally:
            self._firing = False
        if not self._in_flight and self._again:
            self._again = False
            self.request()

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish at QoS 1; a message of an announcement counts until the broker has it."""
        on_acked = None
        if self._firing:
            self._in_flight += 1
            on_acked = self._acked
        # bulk: an announcement is bounded (one at a time) and must not hold commands back.
        if not self._send(topic, payload, qos=1, retain=retain, on_acked=on_acked, bulk=self._firing) \
                and on_acked is not None:
            self._acked()

    def _acked(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        if not self._in_flight and self._again and not self._firing:
            self._again = False
            self.request()

    def cancel(self) -> None:
        """Forget a scheduled announcement (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class HomeAssistant(Feature):
    """Discovery configs, their clean-up, and terminal numbers (registered when discovery is enabled)."""

    def __init__(self, config: Config, send: Callable[..., bool]) -> None:
        self._config = config
        # However often HA says `online`, one announcement at a time.
        self.announcer = Announcer(self.announce, send)
        self._publish = self.announcer.publish
        self._terminals: dict[str, str] = {}
        # Known from the start, not from the first announcement: a retained config read before it
        # (an announcement can be deferred) must not look like one we no longer announce.
        self._announced = {topic for topic, _ in discovery.discovery_messages(config)}
        self._removed: set[str] = set()

    def routes(self) -> list[Route]:
        ha = self._config.homeassistant
        return [
            Route(ha.status_topic, lambda topic, payload, retained: self.on_homeassistant_status(payload)),
            Route(discovery.cleanup_filter(ha.prefix), self.on_discovery_config),
        ]

    def attach(self, bus: Bus) -> None:
        bus.on_connected(self.announcer.request)
        if self._config.devices:
            bus.on_state(self.observe_state)

    def stop(self) -> None:
        self.announcer.cancel()

    def announce(self) -> None:
        """Publish every discovery config (retained)."""
        messages = discovery.discovery_messages(self._config, self._terminals)
        self._announced = {topic for topic, _ in messages}
        for topic, payload in messages:
            self._publish(topic, payload, True)

    def on_homeassistant_status(self, payload: bytes) -> None:
        """HA restarted and forgot its entities: announce them again (coalesced, rate-limited)."""
        if payload.strip() == b"online":
            self.announcer.request()

    def on_discovery_config(self, topic: str, payload: bytes, retained: bool) -> None:
        """A retained discovery config under our node id, read at (re)subscription.

        One we no longer announce (a device removed from the config, an entity kind
        dropped) is cleared, so HA removes it. One we still announce is ours to write: what
        it says is never read back (any client can write it; issue 17: a forged serial number).
        """
        if not retained or not payload or topic in self._announced:
            return
        owner = discovery.owner_name(self._config, payload)
        if owner is not None:
            if owner not in self._removed:
                self._removed.add(owner)
                log.info("removing %r from Home Assistant: no longer in the config", owner)
            log.debug("clearing %s", topic)
            self._publish(topic, b"", True)

    def observe_state(self, device: str, payload: bytes) -> None:
        """Every state the bridge publishes: learn the device's terminal number from the cloud's reply."""
        if device not in self._config.devices:
            return
        try:
            state: Any = json.loads(payload)
        except (ValueError, RecursionError):
            return
        terminal = state.get("terminal_num") if isinstance(state, dict) else None
        if isinstance(terminal, str) and terminal:
            self._set_terminal(device, terminal)

    def _set_terminal(self, device: str, terminal: str) -> None:
        if self._terminals.get(device) == terminal:
            return
        self._terminals[device] = terminal
        # HA updates the device's serial number from any of its entities' configs.
        for topic, message in discovery.camera_messages(self._config, device, terminal):
            self._publish(topic, message, True)
