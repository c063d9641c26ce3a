"""Message types that cross layers (pure, frozen): a command as it arrived, and a feature's route."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    """A capture command as it arrived from MQTT."""

    device: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    dup: bool = False


Handler = Callable[[str, bytes, bool], None]  # (topic, payload, retained)


@dataclass(frozen=True, slots=True)
class Route:
    """A topic or filter a feature subscribes to, and its handler.

    `ordered`: the message keeps its place among held commands (a held capture must not run
    with settings sent after it); otherwise it is handled at once. `listen=False`: a topic an
    older version subscribed to, which a persistent session keeps: unsubscribed at every connection.
    """

    topic: str
    handler: Handler
    ordered: bool = False
    listen: bool = True
