"""The service's view of the world: small Protocols its adapters implement (fakes in unit tests)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from bridge.core.reply import InstructionReply

log = logging.getLogger("bridge")


class StatePublisher(Protocol):
    """Publishes a state to `<base>/<device>/capture/state` (and a response topic, if any).

    It never raises: a topic that cannot be published is logged, and `on_acked` runs when
    the broker has the state or when no topic could take it (nothing will ever ack it).
    """

    def publish_state(
        self,
        device: str,
        payload: bytes,
        *,
        retain: bool = True,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        on_acked: Callable[[], None] | None = None,
    ) -> None: ...


class CaptureCloud(Protocol):
    """Sends ActiveNewPhotograph; returns the 200 reply or raises CloudError."""

    async def capture(self, guid: str, params: dict[str, Any]) -> InstructionReply: ...


class Observer(Protocol):
    """Hooks for metrics; every method must be cheap and never raise."""

    def finished(self, status: str, error: str | None, seconds: float) -> None: ...

    def cloud_call(self, seconds: float) -> None: ...

    def load(self, in_flight: int, backlog: int) -> None: ...

    def journal_writable(self, writable: bool) -> None: ...


class NoObserver:
    def finished(self, status: str, error: str | None, seconds: float) -> None:
        pass

    def cloud_call(self, seconds: float) -> None:
        pass

    def load(self, in_flight: int, backlog: int) -> None:
        pass

    def journal_writable(self, writable: bool) -> None:
        pass


class ObservedPublisher:
    """A publisher whose every state is also shown to `observe` (features learn from states)."""

    def __init__(self, inner: StatePublisher, observe: Callable[[str, bytes], None]) -> None:
        self._inner = inner
        self._observe = observe

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
        """Publish, then observe."""
        self._inner.publish_state(device, payload, retain=retain, response_topic=response_topic,
                                  correlation=correlation, on_acked=on_acked)
        try:
            self._observe(device, payload)
        except Exception:  # a bug here must not lose the state's acknowledgement path
            log.exception("observing a state failed")
