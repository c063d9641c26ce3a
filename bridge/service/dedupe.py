"""Redelivered commands never fire twice: what runs and what finished recently, by request_id and payload.

A DUP copy of a command still running is dropped; a request_id seen within the window is dropped
while the first runs, and answered with the first one's state after it ended.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass

from bridge.core.messages import Command

log = logging.getLogger("bridge.service")

# Finished request_ids remembered, at most (each holds its final state, ~0.6 KB). Running commands
# are always remembered: forgetting one would let its resend fire a second capture.
MAX_REMEMBERED = 10_000

DedupeKey = tuple[str, str, str]
RUNNING = b""  # `seen` for a duplicate of a command still running


@dataclass(slots=True)
class _Remembered:
    """A finished command's final state."""

    state: bytes
    finished_at: float


class Dedupe:
    """Running commands (never evicted) and finished ones (oldest first, within `window` seconds)."""

    def __init__(self, window: float) -> None:
        self._window = window
        self._running: dict[DedupeKey, list[object]] = {}
        self._recent: OrderedDict[DedupeKey, _Remembered] = OrderedDict()

    @staticmethod
    def keys(key: str, command: Command, request_id: str | None) -> tuple[DedupeKey, ...]:
        """The keys a command is known by: its request_id, and its payload (for broker redeliveries)."""
        keys: list[DedupeKey] = []
        if request_id:
            keys.append(("rid", key, request_id))
        digest = hashlib.blake2b(command.payload, digest_size=16).hexdigest()
        keys.append(("payload", key, digest))
        return tuple(keys)

    def seen(self, command: Command, keys: tuple[DedupeKey, ...], now: float) -> bytes | None:
        """None for a new command; RUNNING, or the remembered final state, for a duplicate."""
        # The payload key only counts for a broker redelivery (DUP); the same payload sent
        # again on purpose is a new capture.
        for key in keys:
            if key[0] == "payload" and not command.dup:
                continue
            if key in self._running:
                log.info("duplicate of a command still running, dropped", extra={"device": command.device})
                return RUNNING
            known = self._recent.get(key)
            if known is None:
                continue
            if now - known.finished_at > self._window:
                # Expired: checked here, not only when another command sweeps the memory, or a quiet
                # bridge would answer a reused request_id with the old photo forever.
                del self._recent[key]
                continue
            log.info("duplicate of a finished command, its state sent again", extra={"device": command.device})
            return known.state
        return None

    def started(self, keys: tuple[DedupeKey, ...], job: object) -> None:
        """`job` runs under `keys` until `finished`."""
        for k in keys:
            self._running.setdefault(k, []).append(job)

    def finished(self, keys: tuple[DedupeKey, ...], job: object, state: bytes, now: float) -> None:
        """`job` ended with `state`: remembered by request_id for the window."""
        for key in keys:
            jobs = self._running.get(key)
            if jobs is not None and job in jobs:
                jobs.remove(job)
                if not jobs:
                    del self._running[key]
            # A broker redelivers (DUP) only what we have not acknowledged, i.e. while it runs;
            # remembering every payload for the whole window would cost memory for nothing.
            if key[0] == "rid":
                self._remember(key, state, now)

    def _remember(self, key: DedupeKey, payload: bytes, now: float) -> None:
        self._recent.pop(key, None)
        self._recent[key] = _Remembered(payload, now)
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if now - oldest.finished_at <= self._window and len(self._recent) <= MAX_REMEMBERED:
                break
            self._recent.popitem(last=False)
