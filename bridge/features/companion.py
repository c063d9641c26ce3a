"""What the bridge publishes besides capture states: settings, bridge info, Home Assistant discovery.

It sees MQTT through one `publish(topic, payload, retain)` callable, so unit tests drive it
with a list. The start-up order it relies on (see `app.py`): the adapter subscribes to
`<base>/bridge/settings`, the settings/set filter and the discovery filter, then sends
itself a marker on `<base>/bridge/sync/<client_id>`. Retained messages for those
subscriptions reach us before the marker does, so at `synced()` the chosen settings are
known, and commands (held until then) see them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from bridge import __version__
from bridge.config import GUID_RE, Config
from bridge.core import topics
from bridge.core.errors import InvalidCommand
from bridge.core.settings import SettingsStore, encode, parse_settings_payload
from bridge.features import discovery

log = logging.getLogger("bridge.companion")

Publish = Callable[[str, bytes, bool], None]


def info_payload(in_flight: int, backlog: int) -> bytes:
    """`<base>/bridge/info`: version, captures in flight and waiting."""
    return json.dumps(
        {"version": __version__, "in_flight": in_flight, "backlog": backlog}, separators=(",", ":")
    ).encode()


class Companion:
    """Settings store + its topics, bridge info, discovery announcements and their clean-up."""

    def __init__(self, config: Config, publish: Publish, store: SettingsStore) -> None:
        self._config = config
        self._publish = publish
        self.store = store
        self._base = config.mqtt.base_topic
        self._ha = config.homeassistant.enabled
        self._terminals: dict[str, str] = {}
        # Known from the start, not from the first announcement: a retained config read before it
        # (an announcement can be deferred) must not look like one we no longer announce.
        self._announced = {topic for topic, _ in discovery.discovery_messages(config)}
        self._last_info: bytes | None = None
        self._removed: set[str] = set()
        self.synced = False

    # --- settings ---------------------------------------------------------------------

    def _known(self, device: str) -> bool:
        # A device a command may address: configured, or a GUID topic id when those are allowed.
        return device in self._config.devices or (
            self._config.bridge.guid_topic_ids and GUID_RE.match(device) is not None
        )

    def _publish_settings(self, device: str) -> None:
        self._publish(topics.settings_topic(self._base, device), encode(self.store.current(device)), True)

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
            self._publish(topics.bridge_settings_topic(self._base), self.store.snapshot(), True)
        self._publish_settings(device)

    def on_settings_snapshot(self, payload: bytes) -> None:
        """`<base>/bridge/settings` as retained at start (later copies are our own echoes)."""
        if self.synced:
            return
        problems = self.store.restore(payload)
        for problem in problems:
            log.warning("stored settings: %s (dropped)", problem)
        removed = [device for device in self.store.devices() if not self._known(device)]
        for device in removed:
            log.info("forgetting the settings of %r: no longer a device of this bridge", device)
            self.store.forget(device)
            self._publish(topics.settings_topic(self._base, device), b"", True)
        if removed:
            self._publish(topics.bridge_settings_topic(self._base), self.store.snapshot(), True)

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
            self._publish(topics.bridge_settings_topic(self._base), self.store.snapshot(), True)
        for device in dict.fromkeys([*self._config.devices, *self.store.devices()]):
            self._publish_settings(device)

    # --- bridge info ------------------------------------------------------------------

    def publish_info(self, in_flight: int, backlog: int, *, force: bool = False) -> None:
        """Retained `<base>/bridge/info`, only when something changed (or `force`)."""
        payload = info_payload(in_flight, backlog)
        if force or payload != self._last_info:
            self._last_info = payload
            self._publish(topics.bridge_info_topic(self._base), payload, True)

    # --- Home Assistant discovery ----------------------------------------------------

    def announce(self) -> None:
        """Publish every discovery config (retained)."""
        messages = discovery.discovery_messages(self._config, self._terminals)
        self._announced = {topic for topic, _ in messages}
        for topic, payload in messages:
            self._publish(topic, payload, True)

    def on_homeassistant_status(self, payload: bytes) -> None:
        """HA restarted and forgot its entities: announce them again."""
        if payload.strip() == b"online":
            self.announce()

    def on_discovery_config(self, topic: str, payload: bytes, retained: bool) -> None:
        """A retained discovery config under our node id, read at (re)subscription.

        One we no longer announce (a device removed from the config, an entity kind
        dropped) is cleared, so HA removes it. One we still announce may hold the
        terminal number learned before the restart.
        """
        if not retained or not payload:
            return
        if topic in self._announced:
            self._learn_terminal_from_config(payload)
            return
        owner = discovery.owner_name(self._config, payload)
        if owner is not None:
            if owner not in self._removed:
                self._removed.add(owner)
                log.info("removing %r from Home Assistant: no longer in the config", owner)
            log.debug("clearing %s", topic)
            self._publish(topic, b"", True)

    def _learn_terminal_from_config(self, payload: bytes) -> None:
        try:
            device_info = json.loads(payload).get("device", {})
        except (ValueError, AttributeError):
            return
        serial = device_info.get("serial_number") if isinstance(device_info, dict) else None
        identifiers = device_info.get("identifiers") if isinstance(device_info, dict) else None
        if not isinstance(serial, str) or " (" not in serial or not isinstance(identifiers, list):
            return
        for device in self._config.devices:
            if identifiers == [f"{discovery.NODE_ID}_{discovery.safe_id(device)}"]:
                self._set_terminal(device, serial.split(" (", 1)[0])
                return

    def observe_state(self, device: str, payload: bytes) -> None:
        """Every state the bridge publishes: learn the device's terminal number from the cloud's reply."""
        if not self._ha or device not in self._config.devices:
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
