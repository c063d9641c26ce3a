"""Does the broker honour `$share/<group>/...`? Some grant it but treat it as a plain filter (deaf bridge).

An empty command on a probe device tells: the group must deliver it, to us or to a member,
which echoes it on `<base>/bridge/probe/<nonce>`; nothing back within SHARE_PROBE_WAIT means deaf.
Nothing is ever published to a literal `$share/...` topic: Mosquitto denies it (eclipse/mosquitto#2261)
and brokers that close the connection on a denied or invalid publish would cost us the connection
(issue 17). A message that does reach us on a `$share/...` topic (from some other client) proves
the broker takes our filter as a plain one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import paho.mqtt.client as paho

from bridge.core import topics

log = logging.getLogger("bridge.mqtt")

SHARE_PROBE_PREFIX = "$capture-bridge-probe-"  # device id of the probe commands (never executed)
SHARE_PROBE_WAIT = 5.0  # seconds the probe may take to come back


class ShareProbe:
    """Runs the check once per bridge run; `on_ok` / `on_deaf` say how it ended."""

    def __init__(
        self,
        client: paho.Client,
        base: str,
        group: str | None,
        problems: dict[str, str],
        *,
        on_ok: Callable[[], None],
        on_deaf: Callable[[], None],
        current: Callable[[int], bool],
    ) -> None:
        self._client = client
        self._base = base
        self._group = group
        self._problems = problems
        self._on_ok = on_ok
        self._on_deaf = on_deaf
        self._current = current
        self._checking = False
        self._nonce = ""
        self.checked = group is None

    def _echo_topic(self, nonce: str) -> str:
        return f"{self._base}/bridge/probe/{nonce}"

    def start(self, connection: int) -> None:
        """Publish the probe command; decide within SHARE_PROBE_WAIT seconds."""
        if self.checked or self._checking:
            return
        self._checking = True
        self._nonce = uuid.uuid4().hex[:12]
        # Not tracked as a subscription of ours: an ACL refusing it only leaves the timeout.
        self._client.subscribe(self._echo_topic(self._nonce), qos=1)
        self._client.publish(topics.command_topic(self._base, SHARE_PROBE_PREFIX + self._nonce), b"", qos=1)
        asyncio.get_running_loop().call_later(SHARE_PROBE_WAIT, self._unconfirmed, connection)

    def consumed(self, topic: str, device: str | None) -> bool:
        """A message that belongs to a probe (ours or another member's): handled here, True."""
        if topic.startswith("$share/"):
            if self._checking:
                self._ignored()
            return True
        if self._checking and topic == self._echo_topic(self._nonce):
            self._ok()
            return True
        if device is not None and device.startswith(SHARE_PROBE_PREFIX):
            self._arrived(device[len(SHARE_PROBE_PREFIX):])
            return True
        return False

    def _arrived(self, nonce: str) -> None:
        if self._checking and nonce == self._nonce:
            self._ok()
        elif self._group and nonce and "/" not in nonce:
            # Another member's probe reached us through the group: tell it so.
            self._client.publish(self._echo_topic(nonce), b"", qos=1)

    def _ok(self) -> None:
        self._finish()
        log.debug("shared subscription honoured: the probe command came through $share/%s/...", self._group)
        self._on_ok()

    def _unconfirmed(self, connection: int) -> None:
        if not self._checking or not self._current(connection):
            return
        self._ignored(
            f"the broker delivered no probe command through $share/{self._group}/... within "
            f"{SHARE_PROBE_WAIT:g}s: it does not seem to support shared subscriptions, and this bridge would "
            "receive no commands; remove mqtt.shared_group (or use a broker that supports them)")

    def _ignored(self, why: str | None = None) -> None:
        self._finish()
        why = why or (f"the broker treats $share/{self._group}/... as a plain topic, not as a "
                      "shared subscription: this bridge receives no commands; remove mqtt.shared_group or use a "
                      "broker that supports shared subscriptions")
        self._problems["$share"] = why
        log.error("%s", why)
        self._on_deaf()

    def _finish(self) -> None:
        self.checked = True
        self._checking = False
        self._client.unsubscribe(self._echo_topic(self._nonce))

    def connection_lost(self) -> None:
        """The connection dropped while the probe was out: the next connection checks again.

        The probe is an ordinary command on our own topics, so checking again costs nothing.
        """
        self._checking = False
