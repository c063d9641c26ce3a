"""Result topics: request/response for clients without MQTT 5 Response Topics (ThingsBoard's gateway).

With `mqtt.result_topics: true`, every final state of a command that names a `request_id` is
also published, not retained, on `<base>/<id>/capture/result/<request_id>`: one message per
command, its final state only (never `pending`), so a client can subscribe to the one topic of
its request and take the first message as the answer. The topic is always inside the bridge's
own tree. In the request_id, `%`, `/`, `+`, `#` and control characters are written as `%XX`
(so `a/b` answers on `.../result/a%2Fb`).
"""

from __future__ import annotations

import json
import logging
import re

from bridge.config import Config
from bridge.core.state import PENDING
from bridge.features.base import Bus, Feature, Publish

log = logging.getLogger("bridge")

RESULT_SUFFIX = "capture/result"
_ESCAPED = re.compile(r"[%/+#\x00-\x1f\x7f]")


def result_level(request_id: str) -> str:
    """A request_id as one topic level: `%`, `/`, `+`, `#` and control characters as `%XX`."""
    return _ESCAPED.sub(lambda m: f"%{ord(m.group()):02X}", request_id)


def result_topic(base: str, device: str, request_id: str) -> str:
    """Where the final state of `request_id` on `device` is published."""
    return f"{base}/{device}/{RESULT_SUFFIX}/{result_level(request_id)}"


class ResultTopics(Feature):
    """Publishes each final state with a request_id once more, on its request's own topic."""

    def __init__(self, config: Config, publish: Publish) -> None:
        self._base = config.mqtt.base_topic
        self._publish = publish

    def attach(self, bus: Bus) -> None:
        bus.on_state(self.observe_state)

    def observe_state(self, device: str, payload: bytes) -> None:
        """A state was published: a final one with a request_id goes to its result topic too."""
        try:
            state = json.loads(payload)
        except (ValueError, RecursionError):
            return
        if not isinstance(state, dict) or state.get("status") in (None, PENDING):
            return
        request_id = state.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            return
        self._publish(result_topic(self._base, device, request_id), payload, qos=1, retain=False)

