"""The inbound gate: acknowledgements in arrival order, after the journal commit; holding under back-pressure.

Two rules live here and nowhere else:
- a QoS 1/2 message is acknowledged only after `before_ack` (the journal commit) says the
  commands so far are durable, and acknowledgements go out in arrival order (MQTT requires it);
- while too many of our publishes wait for the broker (back-pressure), messages that arrive are
  held: not delivered and not acknowledged, in order, until half of the waiting ones are through.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("bridge.mqtt")

# Messages waiting for the broker above which commands are no longer acknowledged, so the broker
# stops sending them, until half of them are through. Each message waiting in paho costs ~3 KB
# (docs/performance.md: a 30,000-command flood).
PUBLISH_HIGH_WATER = 2_000
# MQTT 5 Receive Maximum: commands the broker sends us unacknowledged, at most; also how many
# held ones are released per loop pass.
RECEIVE_MAXIMUM = 1000

Item = TypeVar("Item")


class InboundGate(Generic[Item]):
    """Decides when a received message is delivered and when it is acknowledged."""

    def __init__(
        self,
        *,
        ack: Callable[[int, int], object],
        pressing: Callable[[], int],
        deliver: Callable[[Item], None],
        call_soon: Callable[[Callable[[], None]], object],
        before_ack: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ack = ack
        self._pressing = pressing
        self._deliver = deliver
        self._call_soon = call_soon
        self._before_ack = before_ack
        self._clock = clock
        # Message ids and QoS of what we have not acknowledged yet, in arrival order; the first one
        # is arrival number _acked. Two bytes and one each: a flood holds tens of thousands.
        self._mids = array("H")
        self._qos = array("B")
        self._acked = 0
        # Held messages, and their arrival numbers from _held_at[_held_head] on.
        self._held: deque[Item] = deque()
        self._held_at = array("Q")
        self._held_head = 0
        self.backpressure = False
        self._pressure_warned = -60.0  # when back-pressure was last logged at WARNING

    @property
    def held(self) -> int:
        """Messages received under back-pressure, not delivered and not acknowledged yet."""
        return len(self._held)

    def arrived(self, mid: int, qos: int) -> int:
        """Note a received message (before it is decoded); returns its arrival number."""
        arrival = self._acked + len(self._mids)
        if qos > 0:
            if not self._mids:
                self._call_soon(self.flush)  # acknowledged once per loop pass
            self._mids.append(mid)
            self._qos.append(qos)
        return arrival

    def offer(self, qos: int, arrival: int, item: Item, *, ordered: bool = False) -> None:
        """Deliver now, or hold behind what is held.

        A QoS 0 command is not held (the broker does not wait for it); `ordered` work (a settings
        change) waits behind held messages at any QoS, so it never overtakes them.
        """
        if (qos > 0 and self.backpressure) or ((qos > 0 or ordered) and self._held):
            # Holding acks should stop the broker at our Receive Maximum; Mosquitto 2.0 does not
            # always (eclipse/mosquitto#2301). What comes anyway waits here, unacknowledged.
            self._held.append(item)
            self._held_at.append(arrival)
            return
        self._deliver(item)

    def held_back(self) -> bool:
        """Back-pressure: too many messages wait for the broker to take more commands now."""
        waiting = self._pressing()
        if not self.backpressure and waiting > PUBLISH_HIGH_WATER:
            self.backpressure = True
            # In a flood this switches several times a second: one WARNING a minute, the rest DEBUG.
            now = self._clock()
            level = logging.WARNING if now - self._pressure_warned >= 60 else logging.DEBUG
            if level == logging.WARNING:
                self._pressure_warned = now
            log.log(level, "%d messages wait for the broker: not taking commands until they are through", waiting)
        elif self.backpressure and waiting <= PUBLISH_HIGH_WATER // 2:
            self.backpressure = False
            log.debug("the broker has caught up: taking commands again (%d held)", len(self._held))
        return self.backpressure

    def _release(self) -> None:
        """Deliver held messages, a Receive Maximum's worth per loop pass, while the queue has room."""
        released = 0
        while self._held and released < RECEIVE_MAXIMUM and not self.held_back():
            self._deliver(self._held.popleft())
            self._held_head += 1
            released += 1
        if self._held_head > len(self._held_at) // 2:
            del self._held_at[: self._held_head]
            self._held_head = 0
        if self._held and released and not self.backpressure:
            self._call_soon(self.flush)

    def flush(self, *, closing: bool = False) -> None:
        """Release what may run, commit, then acknowledge in order up to the first held message.

        Closing, back-pressure no longer matters: what the journal holds is acknowledged, or the
        broker would deliver it again at the next start and the journal would run it twice.
        """
        if not self._mids or (self.held_back() and not closing):
            return
        if not closing:
            self._release()
        if self._before_ack is not None:
            try:
                durable = self._before_ack()
            except Exception:
                log.exception("journal commit failed; commands not acknowledged")
                durable = False
            if not durable:
                # Kept, not acknowledged: the broker stops sending once its in-flight window is full;
                # flush() again when the journal can be written again.
                return
        # Up to the first held message: it is not in the journal yet, and acknowledgements go in order.
        count = self._held_at[self._held_head] - self._acked if self._held else len(self._mids)
        mids, qos = self._mids, self._qos
        for i in range(count):
            self._ack(mids[i], qos[i])
        del mids[:count], qos[:count]
        self._acked += count

    def room(self) -> None:
        """A publish was acknowledged: past back-pressure, take commands again."""
        if self.backpressure and not self.held_back():
            self.flush()

    def tick(self) -> None:
        """Once a second: held messages run and are acknowledged once the queue is short again."""
        if (self.backpressure and not self.held_back()) or (self._held and not self.backpressure):
            self.flush()

    def connection_lost(self) -> None:
        """Unacknowledged messages cannot be acknowledged any more: the broker delivers them again."""
        self._acked += len(self._mids)
        del self._mids[:], self._qos[:]
        self._held.clear()
        del self._held_at[:]
        self._held_head = 0
