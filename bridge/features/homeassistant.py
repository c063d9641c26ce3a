"""Home Assistant: MQTT discovery announced (again at every HA birth), clean-up of removed cameras,
the migration between per-entity and device-based discovery, and the terminal number the cloud
named in this run's answers shown as the camera's serial number.

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
from bridge.core.errors import ConfigError
from bridge.core.messages import Route
from bridge.features import device_discovery, discovery
from bridge.features.base import Bus, Feature

log = logging.getLogger("bridge.homeassistant")

# After the migrate requests, before the new configs: HA unloads each old entity first (a task per
# entity), else the new one with the same unique_id would be refused as a duplicate. A margin: with
# 46 entities ha-check passes without it, but HA's unload work grows with the fleet.
MIGRATE_SETTLE = 2.0
MIGRATE_SETTLE_PER_1000 = 1.0


def migrate_settle(count: int) -> float:
    """Seconds between `count` migrate requests and the configs that complete the migration."""
    return MIGRATE_SETTLE + MIGRATE_SETTLE_PER_1000 * count / 1000


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
    """Discovery configs, their clean-up and migration, and terminal numbers (registered when discovery is on).

    Configs this bridge announced in the other mode (`homeassistant.discovery` changed, or an install
    from before device discovery) are moved over as HA documents it: `{"migrate_discovery": true}`
    (not retained) on each old topic, then, once HA had time to unload them, the new configs, then the
    old topics cleared. Unique ids, entity ids and history stay. The first announcement of a run waits
    until what the broker kept for us has arrived, so the migration comes before it.
    """

    def __init__(
        self, config: Config, send: Callable[..., bool], settle: Callable[[int], float] = migrate_settle
    ) -> None:
        clash = discovery.id_clash(config)
        if clash is not None:
            raise ConfigError(clash)
        self._config = config
        self._send = send
        self._settle = settle
        # However often HA says `online`, one announcement at a time.
        self.announcer = Announcer(self.announce, send)
        self._publish = self.announcer.publish
        self._terminals: dict[str, str] = {}
        # Known from the start, not from the first announcement: a retained config read before it
        # (an announcement can be deferred) must not look like one we no longer announce.
        self._announced = {topic for topic, _ in device_discovery.announcement(config)}
        self._other_mode = device_discovery.other_mode_topics(config)
        self._removed: set[str] = set()
        self._moving: set[str] = set()  # ours in the other mode, still to be migrated
        self._migrated: set[str] = set()  # migrate request sent: cleared after the next announcement
        self._ready = False
        self._settling: asyncio.TimerHandle | None = None

    def routes(self) -> list[Route]:
        ha = self._config.homeassistant
        return [
            Route(ha.status_topic, lambda topic, payload, retained: self.on_homeassistant_status(payload)),
            Route(discovery.cleanup_filter(ha.prefix), self.on_discovery_config),
            Route(device_discovery.cleanup_filter(ha.prefix, self._config.mqtt.client_id), self.on_discovery_config),
        ]

    def attach(self, bus: Bus) -> None:
        bus.on_connected(self._connected)
        bus.on_ready(self.ready)
        if self._config.devices:
            bus.on_state(self.observe_state)

    def stop(self) -> None:
        self.announcer.cancel()
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None

    def _connected(self) -> None:
        if self._ready:  # the first connection of a run waits for `ready`
            self.request()

    def ready(self) -> None:
        """What the broker kept for us has arrived (once per run): migrate what needs it, then announce."""
        self._ready = True
        self.request()

    def request(self) -> None:
        """Announce (coalesced, rate-limited); first send the migrate requests of configs found meanwhile."""
        if self._settling is not None:
            return  # announces when HA had its time
        if not self._moving:
            self.announcer.request()
            return
        moving, self._moving = sorted(self._moving), set()
        log.info("moving %d Home Assistant discovery config(s) to %s discovery", len(moving),
                 self._config.homeassistant.discovery)
        for topic in moving:
            # Not retained: a migrate request left on the broker would unload the entity at every HA start.
            self._send(topic, device_discovery.MIGRATE, qos=1, retain=False, bulk=True)
        self._migrated.update(moving)
        self._settling = asyncio.get_running_loop().call_later(self._settle(len(moving)), self._settled)

    def _settled(self) -> None:
        self._settling = None
        self.request()

    def announce(self) -> None:
        """Publish every discovery config (retained), then clear the topics migrated away from."""
        messages = device_discovery.announcement(self._config, self._terminals)
        self._announced = {topic for topic, _ in messages}
        for topic, payload in messages:
            self._publish(topic, payload, True)
        migrated, self._migrated = sorted(self._migrated), set()
        for topic in migrated:
            self._publish(topic, b"", True)

    def on_homeassistant_status(self, payload: bytes) -> None:
        """HA restarted and forgot its entities: announce them again (coalesced, rate-limited)."""
        if payload.strip() == b"online":
            self.request()

    def on_discovery_config(self, topic: str, payload: bytes, retained: bool) -> None:
        """A retained discovery config under our node id (per-entity) or node (device), read at (re)subscription.

        One we still announce is ours to write: what it says is never read back (any client can
        write it; issue 17: a forged serial number). One of ours in the other mode that still
        describes a configured entity is migrated; any other of ours (a device removed from the
        config, an entity kind dropped) is cleared, so HA removes it.
        """
        if not retained or not payload or topic in self._announced:
            return
        if device_discovery.is_device_topic(self._config.homeassistant.prefix, topic):
            owner = device_discovery.owner_name(self._config, payload)
        else:
            owner = discovery.owner_name(self._config, payload)
        if owner is None or topic in self._migrated:
            return
        if topic in self._other_mode:
            self._moving.add(topic)
            if self._ready:
                self.request()
            return
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
        for topic, message in device_discovery.camera_announcement(self._config, device, terminal):
            self._publish(topic, message, True)
