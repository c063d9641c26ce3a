"""The capture service: commands in, cloud calls out, exactly one final state per command.

It sees the outside world through two small Protocols (`StatePublisher`,
`CaptureCloud`), so unit tests drive it with in-memory fakes. Rules it keeps:

- `submit` never blocks: it validates (pure, microseconds), records the command
  in the journal and queues it; the cloud call runs in its own task.
- at most one capture in flight per device; later ones wait their turn, in order;
- at most `max_in_flight` cloud calls at once, at most `max_backlog` waiting:
  past that a command is answered `overloaded` at once;
- a redelivered command does not fire a second capture: an MQTT DUP copy of one
  still running is dropped; a request_id seen within the window is dropped while
  the first runs and answered with the first one's state after it ended;
- states wait for the journal commit (`flush`), which the MQTT adapter also calls
  before it acknowledges commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge import state as states
from bridge.cloud import InstructionReply
from bridge.command import CaptureCommand, Limits, decode_payload, parse_command, request_id_of
from bridge.config import GUID_RE
from bridge.errors import BridgeError, CloudError, ErrorCode, InvalidCommand, UnknownDevice
from bridge.journal import Journal, JournalEntry
from bridge.settings import with_settings

log = logging.getLogger("bridge.service")

MAX_DEVICE_ID = 128
# request_ids remembered for de-duplication, at most (each holds its final state, ~0.6 KB).
MAX_REMEMBERED = 10_000


class StatePublisher(Protocol):
    """Publishes a state to `<base>/<device>/capture/state` (and a response topic, if any)."""

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


class _NoObserver:
    def finished(self, status: str, error: str | None, seconds: float) -> None:
        pass

    def cloud_call(self, seconds: float) -> None:
        pass

    def load(self, in_flight: int, backlog: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Command:
    """A capture command as it arrived from MQTT."""

    device: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None
    dup: bool = False


@dataclass(slots=True)
class _Job:
    command: Command
    ctx: states.Context
    journal_id: int | None
    received: float
    keys: tuple[tuple[str, str, str], ...]
    capture: CaptureCommand | None = None
    error: BridgeError | None = None


@dataclass(slots=True)
class _Remembered:
    """What we know of a recent command, for de-duplication."""

    state: bytes | None = None
    finished_at: float | None = None
    jobs: list[_Job] = field(default_factory=list)


def resolve_device(
    device: str, devices: Mapping[str, str], guid_topic_ids: bool = True
) -> str:
    """Topic id -> FAssetGUID: the `devices` map first, else the id itself when it is a GUID."""
    guid = devices.get(device)
    if guid is not None:
        return guid
    if len(device) > MAX_DEVICE_ID:
        raise UnknownDevice(f"device id longer than {MAX_DEVICE_ID} characters")
    if guid_topic_ids and GUID_RE.match(device):
        return device
    if guid_topic_ids:
        raise UnknownDevice(f"device {device!r} is not configured and is not a GUID")
    raise UnknownDevice(f"device {device!r} is not configured")


class CaptureService:
    """Turns accepted commands into cloud calls and final states."""

    def __init__(
        self,
        cloud: CaptureCloud,
        publisher: StatePublisher,
        *,
        devices: Mapping[str, str] | None = None,
        guid_topic_ids: bool = True,
        limits: Limits | None = None,
        max_payload_bytes: int = 65536,
        max_in_flight: int = 1024,
        max_backlog: int = 10000,
        publish_pending: bool = False,
        park_when_closed: bool = True,
        journal: Journal | None = None,
        dedupe_window: float = 600.0,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        defaults_for: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        self._cloud = cloud
        self._publisher = publisher
        self._devices = dict(devices or {})
        self._guid_topic_ids = guid_topic_ids
        self._limits = limits or Limits()
        self._max_payload = max_payload_bytes
        self._max_in_flight = max_in_flight
        self._max_backlog = max_backlog
        self._publish_pending = publish_pending
        self._park_when_closed = park_when_closed
        self._journal = journal
        self._dedupe_window = dedupe_window
        self._observer: Observer = observer or _NoObserver()
        self._clock = clock
        # The device's settings: what a command's missing fields become (bridge/settings.py).
        self._defaults_for = defaults_for
        self._waiting: dict[str, deque[_Job]] = {}
        self._ready: deque[str] = deque()
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog = 0
        self._recent: OrderedDict[tuple[str, str, str], _Remembered] = OrderedDict()
        self._to_publish: list[tuple[_Job, bytes]] = []
        self._flush_scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self._cancelling = False

    # --- intake ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Cloud calls under way."""
        return len(self._active)

    @property
    def backlog(self) -> int:
        """Commands waiting for their device or for a free slot."""
        return self._backlog

    def submit(self, command: Command, journal_id: int | None = None) -> None:
        """Accept one command from MQTT; never blocks, never raises."""
        try:
            self._submit(command, journal_id)
        except Exception:  # a bug here must not kill the MQTT loop
            log.exception("could not accept a command for %s", command.device)

    def _submit(self, command: Command, journal_id: int | None) -> None:
        now = self._clock()
        capture: CaptureCommand | None = None
        error: BridgeError | None = None
        request_id: str | None = None
        guid: str | None = None
        try:
            guid = resolve_device(command.device, self._devices, self._guid_topic_ids)
        except UnknownDevice as exc:
            error = exc
        try:
            data = decode_payload(command.payload, self._max_payload)
            if self._defaults_for is not None:
                data = with_settings(data, self._defaults_for(command.device))
            capture = parse_command(data, self._limits)
            request_id = capture.request_id
        except InvalidCommand as exc:
            error = exc  # a bad payload is reported even when the device is unknown too
            request_id = request_id_of(command.payload) if len(command.payload) <= self._max_payload else None

        # A rejected command fires nothing, so it is no reason to refuse its corrected resend.
        keys = self._dedupe_keys(command, request_id) if error is None else ()
        if self._is_duplicate(command, keys, now):
            if journal_id is not None and self._journal is not None:
                self._journal.done([journal_id])
                self._schedule_flush()
            return

        ctx = states.Context(
            device=command.device,
            asset_guid=guid,
            request_id=request_id,
            request=capture.api_params() if capture is not None else None,
        )
        if journal_id is None and self._journal is not None:
            journal_id = self._journal.add(
                command.device, command.payload, command.response_topic, command.correlation
            )
            self._schedule_flush()
        job = _Job(command, ctx, journal_id, now, keys, capture, error)
        for key in keys:
            self._recent.setdefault(key, _Remembered()).jobs.append(job)
        self._forget_old(now)

        if error is not None:
            self._finish(job, states.error_state(ctx, error))
            return
        if self.closed and self._park_when_closed:
            # Shutting down: the journal keeps it for the next start; without one, say so now.
            if self._journal is None:
                self._finish(job, states.error_state(ctx, CloudError(ErrorCode.OVERLOADED, "bridge is shutting down")))
            return
        device = command.device
        busy = device in self._active or device in self._waiting
        if busy or len(self._active) >= self._max_in_flight:
            if self._backlog >= self._max_backlog:
                overloaded = CloudError(ErrorCode.OVERLOADED, f"backlog full ({self._max_backlog} commands waiting)")
                self._finish(job, states.error_state(ctx, overloaded))
                return
            if self._publish_pending:
                self._publish(job, states.pending_state(ctx), final=False)
            self._backlog += 1
            queue = self._waiting.get(device)
            if queue is None:
                queue = self._waiting[device] = deque()
                if device not in self._active:
                    self._ready.append(device)
            queue.append(job)
        else:
            if self._publish_pending:
                self._publish(job, states.pending_state(ctx), final=False)
            self._start(job)
        self._observer.load(len(self._active), self._backlog)

    def replay(self, entries: list[JournalEntry]) -> None:
        """Take back what the journal held at start: republish known states, run the rest again."""
        for entry in entries:
            command = Command(entry.device, entry.payload, entry.response_topic, entry.correlation)
            if entry.state is not None:
                job = _Job(command, states.Context(entry.device), entry.id, self._clock(), ())
                self._publish(job, entry.state, final=True)
            else:
                self.submit(command, journal_id=entry.id)
        if entries:
            log.info("journal: took back %d unfinished command(s) from the last run", len(entries))

    # --- de-duplication -------------------------------------------------------

    @staticmethod
    def _dedupe_keys(command: Command, request_id: str | None) -> tuple[tuple[str, str, str], ...]:
        keys: list[tuple[str, str, str]] = []
        if request_id:
            keys.append(("rid", command.device, request_id))
        digest = hashlib.blake2b(command.payload, digest_size=16).hexdigest()
        keys.append(("payload", command.device, digest))
        return tuple(keys)

    def _is_duplicate(self, command: Command, keys: tuple[tuple[str, str, str], ...], now: float) -> bool:
        # The payload key only counts for a broker redelivery (DUP); the same payload sent
        # again on purpose is a new capture.
        for key in keys:
            if key[0] == "payload" and not command.dup:
                continue
            known = self._recent.get(key)
            if known is None or (not known.jobs and known.state is None):
                continue
            if not known.jobs and known.finished_at is not None and now - known.finished_at > self._dedupe_window:
                # Expired: checked here, not only when another command sweeps the memory, or a quiet
                # bridge would answer a reused request_id with the old photo forever.
                del self._recent[key]
                continue
            if known.state is None:
                log.info("duplicate of a command still running, dropped", extra={"device": command.device})
                return True
            log.info("duplicate of a finished command, its state sent again", extra={"device": command.device})
            self._publisher.publish_state(
                command.device,
                known.state,
                response_topic=command.response_topic,
                correlation=command.correlation,
            )
            return True
        return False

    def _forget_old(self, now: float) -> None:
        while self._recent:
            known = next(iter(self._recent.values()))
            expired = known.finished_at is not None and now - known.finished_at > self._dedupe_window
            if not expired and len(self._recent) <= MAX_REMEMBERED:
                break
            self._recent.popitem(last=False)

    # --- running ---------------------------------------------------------------

    def _start(self, job: _Job) -> None:
        self._active.add(job.command.device)
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job) -> None:
        assert job.capture is not None
        assert job.ctx.asset_guid is not None
        started = self._clock()
        try:
            reply = await self._cloud.capture(job.ctx.asset_guid, job.capture.api_params())
            state = states.reply_state(job.ctx, reply)
        except BridgeError as exc:
            state = states.error_state(job.ctx, exc)
        except asyncio.CancelledError:
            # Shutdown deadline: no state now; the journal runs it again at the next start.
            self._release(job.command.device)
            raise
        except Exception as exc:  # a bug must still end in a state, never silence
            log.exception("unexpected failure", extra={"device": job.command.device})
            internal = CloudError(ErrorCode.CLOUD_ERROR, f"internal error: {type(exc).__name__}")
            state = states.error_state(job.ctx, internal)
        self._observer.cloud_call(self._clock() - started)
        self._finish(job, state)
        self._release(job.command.device)

    def _release(self, device: str) -> None:
        self._active.discard(device)
        if device in self._waiting:
            self._ready.append(device)
        while self._ready and len(self._active) < self._max_in_flight and not self._cancelling:
            nxt = self._ready.popleft()
            queue = self._waiting[nxt]
            job = queue.popleft()
            if not queue:
                del self._waiting[nxt]
            self._backlog -= 1
            self._start(job)
        if not self._active and not self._waiting:
            self._idle.set()
        self._observer.load(len(self._active), self._backlog)

    # --- answering -------------------------------------------------------------

    def _finish(self, job: _Job, state: dict[str, Any]) -> None:
        payload = states.encode(state)
        if job.journal_id is not None and self._journal is not None:
            self._journal.answered(job.journal_id, payload)
        now = self._clock()
        for key in job.keys:
            known = self._recent.get(key)
            if known is None:
                continue
            if job in known.jobs:
                known.jobs.remove(job)
            if key[0] == "payload":
                # A broker redelivers (DUP) only what we have not acknowledged, i.e. while it runs;
                # remembering every payload for the whole window would cost memory for nothing.
                if not known.jobs:
                    del self._recent[key]
            else:
                known.state, known.finished_at = payload, now
        status, error = state["status"], state["error"]
        self._observer.finished(status, error, now - job.received)
        extra = {"device": job.command.device, "request_id": job.ctx.request_id, "error": error}
        if status == states.OK:
            log.info("capture ok, file %s", state["file_id"], extra=extra)
        else:
            log.warning("capture %s: %s: %s", status, error, state["message"], extra=extra)
        if self._journal is not None and job.journal_id is not None:
            # Published by flush(), once the state is committed: a crash can then only repeat it.
            self._to_publish.append((job, payload))
            self._schedule_flush()
        else:
            self._publish(job, payload, final=True)

    def _publish(self, job: _Job, state: dict[str, Any] | bytes, *, final: bool) -> None:
        payload = state if isinstance(state, bytes) else states.encode(state)
        journal_id = job.journal_id if final else None
        self._publisher.publish_state(
            job.command.device,
            payload,
            response_topic=job.command.response_topic if final else None,
            correlation=job.command.correlation,
            on_acked=(lambda: self._state_acked(journal_id)) if journal_id is not None else None,
        )

    def _state_acked(self, journal_id: int) -> None:
        if self._journal is not None:
            self._journal.done([journal_id])
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit the journal, then publish the states that waited for it (the MQTT adapter calls
        this before it acknowledges commands, so a PUBACK never precedes its journal row)."""
        self._flush_scheduled = False
        if self._journal is not None:
            self._journal.commit()
        if self._to_publish:
            ready, self._to_publish = self._to_publish, []
            for job, payload in ready:
                self._publish(job, payload, final=True)

    # --- shutdown --------------------------------------------------------------

    async def drain(self, deadline: float) -> int:
        """Stop taking work; wait up to `deadline` seconds for what runs and waits; return how many did not finish."""
        self.closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), deadline)
        unfinished = len(self._active) + self._backlog
        self._cancelling = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()
        self._ready.clear()
        self._backlog = 0
        return unfinished
