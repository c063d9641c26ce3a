"""States out: the device's state topic, and a command's MQTT 5 Response Topic where the policy allows.

The bridge publishes with its own broker identity, so a Response Topic is a request to write
somewhere in its name: never a wildcard or a `$` topic, never under the trees the bridge owns,
and only where a filter of `mqtt.response_topics` matches (diagnostics.response_topic_refusal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.core import topics
from bridge.mqtt.diagnostics import response_topic_refusal, shown, unpublishable
from bridge.mqtt.outbound import PublishQueue

log = logging.getLogger("bridge.mqtt")

MAX_TOPIC_CHARS = 16_383  # below this many characters a topic is under 65,535 bytes whatever they are


class StateOut:
    """Publishes states through the queue; `v5` says whether Response Topics exist on this connection."""

    def __init__(self, queue: PublishQueue, base: str, allowed: Sequence[str], denied: Sequence[str],
                 v5: Callable[[], bool]) -> None:
        self._queue = queue
        self._base = base
        self._allowed = tuple(allowed)
        self._denied = tuple(denied)
        self._v5 = v5

    def publish_state(
        self,
        device: str,
        payload: bytes,
        *,
        retain: bool = True,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        on_acked: Callable[[], None] | None = None,
    ) -> None:
        """The state, retained on the device's state topic; the final one also to the Response Topic.

        Never raises. When neither topic can be published, the state is dropped with a WARNING
        and `on_acked` runs at once: no broker will ever acknowledge it.
        """
        state_topic = topics.state_topic(self._base, device)
        if len(state_topic) > MAX_TOPIC_CHARS and unpublishable(state_topic) is not None:
            # An id that fits a command topic but not its state topic: answered on the bridge's own.
            state_topic, retain = topics.rejected_topic(self._base), False
        sent = self._queue.publish(state_topic, payload, retain=retain, on_acked=on_acked)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("state published on %s (%d bytes, %s): %s", state_topic, len(payload),
                      "retained" if retain else "not retained", payload[:300].decode(errors="replace"),
                      extra={"device": device})
        if response_topic and self._v5() and self._respond(device, payload, response_topic, correlation,
                                                           None if sent else on_acked):
            return
        if not sent:
            log.warning("state dropped: no topic it can be published on", extra={"device": device})
            if on_acked is not None:
                on_acked()

    def _respond(self, device: str, payload: bytes, response_topic: str, correlation: bytes | None,
                 on_acked: Callable[[], None] | None) -> bool:
        refusal = response_topic_refusal(response_topic, self._allowed, self._denied)
        if refusal is not None:
            log.warning("Response Topic %s refused (%s): the state goes only to the state topic",
                        shown(response_topic), refusal, extra={"device": device})
            return False
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            props.CorrelationData = correlation
        return self._queue.publish(response_topic, payload, retain=False, properties=props, on_acked=on_acked)
