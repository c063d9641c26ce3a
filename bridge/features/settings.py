"""Per-device settings over MQTT: `<base>/<id>/capture/settings/set` in, `<base>/<id>/capture/settings` out.

The choices are remembered retained on `<base>/bridge/settings` and read back at start (before
the start-up gate opens), so a command's missing fields come from what users chose.
"""

from __future__ import annotations

import logging

from bridge.config import Config
from bridge.core import topics
from bridge.core.devices import accepted
from bridge.core.errors import InvalidCommand
from bridge.core.messages import Route
from bridge.core.settings import SettingsStore, encode, parse_settings_payload
from bridge.features.base import Bus, Feature, Publish

log = logging.getLogger("bridge.settings")

MAX_PROBLEMS_LOGGED = 20  # a hostile retained memory must not turn into a million log lines


class DeviceSettings(Feature):
    """The settings store's MQTT face."""

    def __init__(self, config: Config, publish: Publish, store: SettingsStore) -> None:
        self._config = config
        self._send = publish
        self.store = store
        self._base = config.mqtt.base_topic
        self._guids = config.guids()
        self.synced = False
        self._bus: Bus | None = None

    def routes(self) -> list[Route]:
        return [
            Route(topics.bridge_settings_topic(self._base), lambda topic, payload, retained:
                  self.on_settings_snapshot(payload)),
            # Keeps its place among held commands: a held capture must not run with settings sent after
            # it, and at start-up a change is applied on top of the remembered settings, not before them.
            Route(topics.settings_set_filter(self._base), self._settings_set_in_order, ordered=True),
        ]

    def attach(self, bus: Bus) -> None:
        self._bus = bus
        bus.on_ready(self.on_synced)
        bus.on_connected(self.on_reconnected)

    def _publish(self, topic: str, payload: bytes) -> None:
        self._send(topic, payload, qos=1, retain=True)

    def _known(self, device: str) -> bool:
        return accepted(device, self._guids, self._config.bridge.guid_topic_ids)

    def _publish_settings(self, device: str) -> None:
        self._publish(topics.settings_topic(self._base, device), encode(self.store.current(device)))

    def _settings_set_in_order(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._bus is None:
            self.on_settings_set(topic, payload, retained)
        else:
            self._bus.in_order(lambda: self.on_settings_set(topic, payload, retained))

    def on_settings_set(self, topic: str, payload: bytes, retained: bool) -> None:
        """`<base>/<id>/capture/settings/set`: validate, apply, publish the device's settings."""
        device = topics.device_of_settings_set(topic, self._base)
        if device is None:
            return
        if retained:
            # Replayed at every start, a retained change would undo every later one.
            log.warning("ignored a retained settings change on %s (publish settings changes without retain)",
                        topic, extra={"device": device})
            return
        if not self._known(device):
            log.warning("ignored settings for %r: not a configured device%s", device,
                        " nor a GUID" if self._config.bridge.guid_topic_ids else "", extra={"device": device})
            return
        try:
            partial = parse_settings_payload(payload, self.store.limits)
        except InvalidCommand as exc:
            log.warning("settings for %s not changed: %s", device, exc.message, extra={"device": device})
            # Published again so a UI that showed the refused value goes back to the real one.
            self._publish_settings(device)
            return
        if self.store.update(device, partial):
            log.info("settings of %s are now %s", device, encode(self.store.current(device)).decode(),
                     extra={"device": device})
            self._publish(topics.bridge_settings_topic(self._base), self.store.snapshot())
        self._publish_settings(device)

    def on_settings_snapshot(self, payload: bytes) -> None:
        """`<base>/bridge/settings` as retained at start (later copies are our own echoes)."""
        if self.synced:
            return
        problems = self.store.restore(payload)
        for problem in problems[:MAX_PROBLEMS_LOGGED]:
            log.warning("stored settings: %s (dropped)", problem)
        if len(problems) > MAX_PROBLEMS_LOGGED:
            log.warning("stored settings: %d more problems (dropped)", len(problems) - MAX_PROBLEMS_LOGGED)
        removed = [device for device in self.store.devices() if not self._known(device)]
        for device in removed:
            log.info("forgetting the settings of %r: no longer a device of this bridge", device)
            self.store.forget(device)
            self._publish(topics.settings_topic(self._base, device), b"")
        if removed:
            self._publish(topics.bridge_settings_topic(self._base), self.store.snapshot())

    def on_synced(self) -> None:
        """Everything retained has arrived: publish every device's settings."""
        if self.synced:
            return
        self.synced = True
        for device in dict.fromkeys([*self._config.devices, *self.store.devices()]):
            self._publish_settings(device)

    def on_reconnected(self) -> None:
        """Connected again after the first sync: publish what a broker that lost its retained store needs."""
        if not self.synced:
            return
        if self.store.devices():
            self._publish(topics.bridge_settings_topic(self._base), self.store.snapshot())
        for device in dict.fromkeys([*self._config.devices, *self.store.devices()]):
            self._publish_settings(device)
