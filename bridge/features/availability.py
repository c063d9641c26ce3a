"""Availability: `online`/`offline` per instance, and the shared view Home Assistant reads (both retained).

- `<base>/bridge/state` is shared by every instance on the base topic (the members of a shared
  group, or separate bridges). It is every instance's last will, and each says `online` there once
  it hears commands. An instance that hears commands and sees `offline` there (another one stopped
  or died) says `online` again at once: one instance going away never marks the others offline.
- `<base>/bridge/instance/<client_id>/state` is this instance's own (`run` names this process). A
  group member's will names it (`instance`), so the members that stay mark a dead one offline.
  A different run saying `online` there after ours was acknowledged proves a second process
  with our client_id (they take the session from each other): the session names that takeover.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Protocol

from bridge.config import Config
from bridge.core import topics
from bridge.core.messages import Route
from bridge.features.base import Bus, Feature, Publish

log = logging.getLogger("bridge")

MAX_INSTANCES = 1024  # other instances remembered (a bound against a flood of forged instance topics)


def _json(data: dict[str, str]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


ONLINE = _json({"state": "online"})
OFFLINE = _json({"state": "offline"})


class Takeover(Protocol):
    """Who is told that another client connects with our client_id (the MQTT session)."""

    def another_instance(self, evidence: str) -> None: ...


def last_will(config: Config) -> tuple[str, bytes]:
    """The will every instance leaves on `<base>/bridge/state`: `offline`, naming the instance in a group."""
    mqtt = config.mqtt
    if mqtt.shared_group is None:
        return topics.availability_topic(mqtt.base_topic), OFFLINE
    return topics.availability_topic(mqtt.base_topic), _json({"state": "offline", "instance": mqtt.client_id})


def _fields(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


class Availability(Feature):
    """Says `online` while the bridge hears commands, `offline` when it stops; keeps the shared view right."""

    def __init__(self, config: Config, publish: Publish, session: Takeover) -> None:
        mqtt = config.mqtt
        self._base = mqtt.base_topic
        self._client_id = mqtt.client_id
        self._shared = topics.availability_topic(self._base)
        self._own = topics.instance_state_topic(self._base, mqtt.client_id)
        self._will = last_will(config)[1]
        self._send = publish
        self._session = session
        self._run = secrets.token_hex(6)
        self._online = False  # we said `online` on this connection and hear commands
        self._acked = False  # the broker has our instance `online` of this run
        self._stopping = False
        self._others: set[str] = set()  # instance topics seen `online`: the only ones a will may mark offline
        self._answering = False  # an `online` answering an `offline` is on its way to the broker
        self._again = False  # another `offline` came meanwhile: answer once more when it is through

    def routes(self) -> list[Route]:
        return [Route(self._shared, self._on_shared),
                Route(topics.instance_state_filter(self._base), self._on_instance)]

    def attach(self, bus: Bus) -> None:
        bus.on_listening(self.listening)
        bus.on_disconnected(self._lost)

    def listening(self, yes: bool) -> None:
        """The bridge hears commands now (or, in a group the broker ignores, never will on this broker)."""
        if self._stopping:
            return
        self._online = yes
        if yes:
            self._say_own("online")
            self._send(self._shared, ONLINE, qos=1, retain=True)
        else:
            # Never online on this broker; `offline` also replaces an `online` a previous run left.
            self._say_own("offline")
            self._send(self._shared, self._will, qos=1, retain=True)

    def _say_own(self, state: str) -> None:
        def acked() -> None:
            self._acked = self._acked or state == "online"

        self._send(self._own, _json({"state": state, "run": self._run}), qos=1, retain=True, on_acked=acked)

    def _lost(self) -> None:
        self._online = False
        self._answering = self._again = False  # a new connection says `online` anyway

    def _on_shared(self, topic: str, payload: bytes, retained: bool) -> None:
        if not self._online or self._stopping or _fields(payload).get("state") != "offline":
            return
        gone = _fields(payload).get("instance")
        log.debug("%s says offline%s; this instance is online: saying so", topic, f" ({gone} went)" if gone else "")
        self._answer()
        if isinstance(gone, str) and gone != self._client_id:
            theirs = topics.instance_state_topic(self._base, gone)
            if theirs in self._others:  # its will: it cannot say so itself any more
                self._others.discard(theirs)
                self._send(theirs, OFFLINE, qos=1, retain=True)

    def _answer(self) -> None:
        # One answer in flight at a time: a flood of forged `offline`s costs one `online` per round trip.
        if self._answering:
            self._again = True
            return
        self._answering = True

        def through() -> None:
            self._answering = False
            if self._again and self._online and not self._stopping:
                self._again = False
                self._answer()

        self._send(self._shared, ONLINE, qos=1, retain=True, on_acked=through)

    def _on_instance(self, topic: str, payload: bytes, retained: bool) -> None:
        fields = _fields(payload)
        if topic != self._own:
            if fields.get("state") == "online" and len(self._others) < MAX_INSTANCES:
                self._others.add(topic)
            elif fields.get("state") != "online":
                self._others.discard(topic)
            return
        if self._stopping:
            return
        if fields.get("state") == "online" and fields.get("run") != self._run and self._acked:
            # Ours was acknowledged earlier in this run, so this was written after it (live or retained).
            self._session.another_instance(f"another process wrote {topic} after this one")
        elif fields.get("state") == "offline" and self._online:
            self._say_own("online")  # written for us by a member that saw our old connection's will

    def stop(self) -> None:
        """Shutting down: this instance and, for the shared view, `offline` (anyone still online says otherwise)."""
        if self._stopping:
            return
        self._stopping = True
        self._online = False
        self._say_own("offline")
        self._send(self._shared, self._will, qos=1, retain=True)
