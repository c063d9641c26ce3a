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
  before it acknowledges commands;
- one device is one FAssetGUID: ordering, the one-capture-per-device rule and
  de-duplication key on the resolved GUID (case-insensitive), whatever topic id
  (alias, lower or upper case GUID) the command came in on; its states still go
  to the topic it came in on;
- while the journal cannot be written (disk full, file gone), `flush` says so
  and the MQTT adapter stops acknowledging; new commands are parked, not run, so
  nothing fires that a crash could not take back. The commit is retried every
  second and everything resumes by itself;
- nothing a client sends can raise out of `submit`, `flush` or `replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.config import GUID_RE
from bridge.core import state as states
from bridge.core.command import CaptureCommand, Limits, decode_payload, parse_command, request_id_of
from bridge.core.errors import BridgeError, CloudError, ErrorCode, InvalidCommand, UnknownDevice
from bridge.core.settings import with_settings
from bridge.infra.cloud import InstructionReply
from bridge.infra.journal import Journal, JournalEntry, JournalError

log = logging.getLogger("bridge.service")

MAX_DEVICE_ID = 128
# Finished request_ids remembered for de-duplication, at most (each holds its final state, ~0.6 KB).
# Running commands are always remembered: forgetting one would let its resend fire a second capture.
MAX_REMEMBERED = 10_000
# Seconds between attempts to write a journal that failed (disk full, I/O error).
JOURNAL_RETRY = 1.0

DedupeKey = tuple[str, str, str]


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


class _NoObserver:
    def finished(self, status: str, error: str | None, seconds: float) -> None:
        pass

    def cloud_call(self, seconds: float) -> None:
        pass

    def load(self, in_flight: int, backlog: int) -> None:
        pass

    def journal_writable(self, writable: bool) -> None:
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
    keys: tuple[DedupeKey, ...]
    # The device as the queues know it: the GUID in lower case, else the topic id.
    key: str = ""
    capture: CaptureCommand | None = None
    error: BridgeError | None = None


@dataclass(slots=True)
class _Remembered:
    """A finished command's final state, for de-duplication."""

    state: bytes
    finished_at: float


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
        on_journal_writable: Callable[[], None] | None = None,
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
        self._on_journal_writable = on_journal_writable
        self._clock = clock
        # The device's settings: what a command's missing fields become (bridge/settings.py).
        self._defaults_for = defaults_for
        self._waiting: dict[str, deque[_Job]] = {}
        self._ready: deque[str] = deque()
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog = 0
        # De-duplication memory: running commands (never evicted) and finished ones, oldest first.
        self._running: dict[DedupeKey, list[_Job]] = {}
        self._recent: OrderedDict[DedupeKey, _Remembered] = OrderedDict()
        self._to_publish: list[tuple[_Job, bytes]] = []
        self._flush_scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self._cancelling = False
        # Journal health: while it cannot be written, commands wait here (not run, not acknowledged).
        self.journal_ok = True
        self._parked: deque[Command] = deque()
        self.finished = 0  # final states so far
        self._retry: asyncio.TimerHandle | None = None

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
            if not self.journal_ok and journal_id is None:
                self._park(command)
                return
            self._submit(command, journal_id)
        except Exception:  # a bug here must not kill the MQTT loop
            log.exception("could not accept a command", extra={"device": command.device})

    def record(self, command: Command) -> int | None:
        """Journal a command that will be submitted later (held at start); returns its journal id.

        Its PUBACK goes out with the next journal commit, so it must be durable now, not when it
        is submitted. None when there is no journal to write it to (or it is oversized: only its
        answer is kept, as in `submit`).
        """
        if self._journal is None or not self.journal_ok or len(command.payload) > self._max_payload:
            return None
        journal_id = self._journal.add(command.device, command.payload, command.response_topic, command.correlation)
        self._schedule_flush()
        return journal_id

    def discard(self, journal_id: int | None) -> None:
        """Forget a recorded command that will not be submitted (a stale retained copy)."""
        if journal_id is not None and self._journal is not None:
            self._journal.done([journal_id])
            self._schedule_flush()

    def _park(self, command: Command) -> None:
        # Not durable, so not run: it is not acknowledged either, and the broker's in-flight window
        # stops it sending more. QoS 0 commands are not bounded by that window: shed past the backlog.
        if len(self._parked) >= max(self._max_backlog, 1):
            ctx = states.Context(command.device)
            job = _Job(command, ctx, None, self._clock(), ())
            overloaded = CloudError(ErrorCode.OVERLOADED, "journal cannot be written and the backlog is full")
            self._finish(job, states.error_state(ctx, overloaded))
            return
        self._parked.append(command)

    def _submit(self, command: Command, journal_id: int | None) -> None:
        now = self._clock()
        capture: CaptureCommand | None = None
        error: BridgeError | None = None
        request_id: str | None = None
        guid: str | None = None
        oversized = len(command.payload) > self._max_payload
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
            request_id = None if oversized else request_id_of(command.payload)
        key = guid.lower() if guid is not None else command.device

        # A rejected command fires nothing, so it is no reason to refuse its corrected resend.
        keys = self._dedupe_keys(key, command, request_id) if error is None else ()
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
            # An oversized payload is refused without keeping it: the journal only needs its answer.
            journal_id = self._journal.add(
                command.device, b"" if oversized else command.payload, command.response_topic, command.correlation
            )
            self._schedule_flush()
        job = _Job(command, ctx, journal_id, now, keys, key, capture, error)
        for k in keys:
            self._running.setdefault(k, []).append(job)

        if error is not None:
            self._finish(job, states.error_state(ctx, error))
            return
        if self.closed and self._park_when_closed:
            # Shutting down: the journal keeps it for the next start; without one, say so now.
            if self._journal is None:
                self._finish(job, states.error_state(ctx, CloudError(ErrorCode.OVERLOADED, "bridge is shutting down")))
            return
        busy = key in self._active or key in self._waiting
        if busy or len(self._active) >= self._max_in_flight:
            if self._backlog >= self._max_backlog:
                overloaded = CloudError(ErrorCode.OVERLOADED, f"backlog full ({self._max_backlog} commands waiting)")
                self._finish(job, states.error_state(ctx, overloaded))
                return
            if self._publish_pending:
                self._publish(job, states.pending_state(ctx), final=False)
            self._backlog += 1
            queue = self._waiting.get(key)
            if queue is None:
                queue = self._waiting[key] = deque()
                if key not in self._active:
                    self._ready.append(key)
            queue.append(job)
        else:
            if self._publish_pending:
                self._publish(job, states.pending_state(ctx), final=False)
            self._start(job)
        self._observer.load(len(self._active), self._backlog)

    def replay(self, entries: list[JournalEntry]) -> None:
        """Take back what the journal held at start: republish known states, run the rest again.

        A row that cannot be taken back (damaged, or written by a bridge with other rules) is
        logged, answered when its device is known, and removed: it must not stop every start.
        """
        for entry in entries:
            try:
                self._replay_one(entry)
            except Exception as exc:
                log.error("journal: row %s cannot be replayed (%s); removed", entry.id, type(exc).__name__)
                if self._journal is not None:
                    self._journal.done([entry.id])
                if isinstance(entry.device, str):
                    ctx = states.Context(entry.device)
                    damaged = InvalidCommand(f"journal row could not be read ({type(exc).__name__})")
                    self._publish(_Job(Command(entry.device, b""), ctx, None, self._clock(), ()),
                                  states.error_state(ctx, damaged), final=True)
        if entries:
            log.info("journal: took back %d unfinished command(s) from the last run", len(entries))
            self._schedule_flush()

    def _replay_one(self, entry: JournalEntry) -> None:
        device, payload, state = entry.device, entry.payload, entry.state
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        if isinstance(state, str):
            state = state.encode("utf-8", "surrogatepass")
        response_topic = entry.response_topic if isinstance(entry.response_topic, str) else None
        correlation = entry.correlation if isinstance(entry.correlation, bytes) else None
        if not isinstance(device, str) or not isinstance(payload, bytes) or not isinstance(entry.id, int):
            raise TypeError("not a journal row")
        command = Command(device, payload, response_topic, correlation)
        if state is not None:
            if not isinstance(state, bytes):
                raise TypeError("state is not bytes")
            job = _Job(command, states.Context(device), entry.id, self._clock(), (), device)
            self._publish(job, state, final=True)
        else:
            self._submit(command, entry.id)

    # --- de-duplication -------------------------------------------------------

    @staticmethod
    def _dedupe_keys(key: str, command: Command, request_id: str | None) -> tuple[DedupeKey, ...]:
        keys: list[DedupeKey] = []
        if request_id:
            keys.append(("rid", key, request_id))
        digest = hashlib.blake2b(command.payload, digest_size=16).hexdigest()
        keys.append(("payload", key, digest))
        return tuple(keys)

    def _is_duplicate(self, command: Command, keys: tuple[DedupeKey, ...], now: float) -> bool:
        # The payload key only counts for a broker redelivery (DUP); the same payload sent
        # again on purpose is a new capture.
        for key in keys:
            if key[0] == "payload" and not command.dup:
                continue
            if key in self._running:
                log.info("duplicate of a command still running, dropped", extra={"device": command.device})
                return True
            known = self._recent.get(key)
            if known is None:
                continue
            if now - known.finished_at > self._dedupe_window:
                # Expired: checked here, not only when another command sweeps the memory, or a quiet
                # bridge would answer a reused request_id with the old photo forever.
                del self._recent[key]
                continue
            log.info("duplicate of a finished command, its state sent again", extra={"device": command.device})
            self._publisher.publish_state(
                command.device,
                known.state,
                retain=states.retained(known.state),
                response_topic=command.response_topic,
                correlation=command.correlation,
            )
            return True
        return False

    def _remember(self, key: DedupeKey, payload: bytes, now: float) -> None:
        self._recent.pop(key, None)
        self._recent[key] = _Remembered(payload, now)
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if now - oldest.finished_at <= self._dedupe_window and len(self._recent) <= MAX_REMEMBERED:
                break
            self._recent.popitem(last=False)

    # --- running ---------------------------------------------------------------

    def _start(self, job: _Job) -> None:
        self._active.add(job.key)
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: _Job) -> None:
        assert job.capture is not None
        assert job.ctx.asset_guid is not None
        started = self._clock()
        extra = {"device": job.command.device, "request_id": job.ctx.request_id}
        log.debug("cloud call: ActiveNewPhotograph %s %s", job.ctx.asset_guid, job.ctx.request, extra=extra)
        try:
            reply = await self._cloud.capture(job.ctx.asset_guid, job.capture.api_params())
            state = states.reply_state(job.ctx, reply)
        except BridgeError as exc:
            state = states.error_state(job.ctx, exc)
        except asyncio.CancelledError:
            # Shutdown deadline: no state now; the journal runs it again at the next start.
            self._release(job.key)
            raise
        except Exception as exc:  # a bug must still end in a state, never silence
            log.exception("unexpected failure", extra={"device": job.command.device})
            internal = CloudError(ErrorCode.CLOUD_ERROR, f"internal error: {type(exc).__name__}")
            state = states.error_state(job.ctx, internal)
        took = self._clock() - started
        self._observer.cloud_call(took)
        log.debug("cloud call done in %.3fs: Result %s, %s", took, state["code"], state["error"] or state["status"],
                  extra=extra)
        try:
            self._finish(job, state)
        finally:
            self._release(job.key)

    def _release(self, key: str) -> None:
        self._active.discard(key)
        if key in self._waiting:
            self._ready.append(key)
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
            jobs = self._running.get(key)
            if jobs is not None and job in jobs:
                jobs.remove(job)
                if not jobs:
                    del self._running[key]
            # A broker redelivers (DUP) only what we have not acknowledged, i.e. while it runs;
            # remembering every payload for the whole window would cost memory for nothing.
            if key[0] == "rid":
                self._remember(key, payload, now)
        status, error = state["status"], state["error"]
        self.finished += 1
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
        journal_id = job.journal_id if final else None
        try:
            payload = state if isinstance(state, bytes) else states.encode(state)
            self._publisher.publish_state(
                job.command.device,
                payload,
                retain=states.retained(state),
                response_topic=job.command.response_topic if final else None,
                correlation=job.command.correlation,
                on_acked=(lambda: self._state_acked(journal_id)) if journal_id is not None else None,
            )
        except Exception:  # the publisher never raises by contract; a bug must not stop the others
            log.exception("could not publish a state", extra={"device": job.command.device})

    def _state_acked(self, journal_id: int) -> None:
        if self._journal is not None:
            self._journal.done([journal_id])
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> bool:
        """Commit the journal, then publish the states that waited for it (the MQTT adapter calls
        this before it acknowledges commands, so a PUBACK never precedes its journal row).

        Returns False, and keeps everything for the next attempt, when the journal cannot be
        written; never raises.
        """
        self._flush_scheduled = False
        if self._journal is not None:
            try:
                self._journal.commit()
            except JournalError as exc:
                self._journal_failed(str(exc))
                return False
            except Exception:  # a bug in the journal must not stop acks and states for good
                log.exception("journal commit failed")
                self._journal_failed("internal error")
                return False
            if not self.journal_ok:
                self._journal_recovered()
        if self._to_publish:
            ready, self._to_publish = self._to_publish, []
            for job, payload in ready:
                self._publish(job, payload, final=True)
        return True

    def _journal_failed(self, reason: str) -> None:
        if self.journal_ok:
            self.journal_ok = False
            path = self._journal.path if self._journal is not None else "?"
            log.error("journal %s cannot be written (%s): not acknowledging or taking commands until it can;"
                      " retrying every %.0fs", path, reason, JOURNAL_RETRY)
            self._observer.journal_writable(False)
        if self._retry is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next flush retries
                self._retry = asyncio.get_running_loop().call_later(JOURNAL_RETRY, self._retry_journal)

    def _retry_journal(self) -> None:
        self._retry = None
        self.flush()

    def _journal_recovered(self) -> None:
        self.journal_ok = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        log.warning("journal writable again: taking %d parked command(s) and acknowledging again",
                    len(self._parked))
        self._observer.journal_writable(True)
        parked, self._parked = self._parked, deque()
        for command in parked:
            self.submit(command)
        if self._on_journal_writable is not None:
            try:
                self._on_journal_writable()
            except Exception:
                log.exception("journal recovery hook failed")

    async def watch_journal(self, interval: float = 2.0) -> None:
        """Notice a deleted or replaced journal file even while no command arrives."""
        while True:
            await asyncio.sleep(interval)
            if self._journal is not None and self.journal_ok:
                self.flush()

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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        return unfinished
