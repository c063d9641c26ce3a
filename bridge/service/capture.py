"""The capture service: commands in, cloud calls out, exactly one final state per command.

It sees the outside world through small Protocols (`ports.py`), so unit tests drive it with
in-memory fakes. Rules it keeps (each with its owner):

- `submit` never blocks: intake (`core/intake.py`, pure) validates, the outbox journals, the
  cloud call runs in its own task;
- at most one capture in flight per device, later ones in order, at most `max_in_flight` cloud
  calls at once (`scheduler.py`); at most `max_backlog` waiting: past that a command is
  answered `overloaded` at once;
- a redelivered command does not fire a second capture (`dedupe.py`);
- no acknowledgement before the journal commit, no state before its row (`outbox.py`);
- one device is one FAssetGUID: ordering, the one-capture-per-device rule and de-duplication
  key on the resolved GUID (case-insensitive), whatever topic id it came in on; its states go
  to the topic it came in on;
- nothing a client sends can raise out of `submit`, `flush` or `replay`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core import state as states
from bridge.core.command import CaptureCommand, Limits
from bridge.core.errors import BridgeError, CloudError, ErrorCode, InvalidCommand
from bridge.core.intake import Rules, take
from bridge.core.messages import Command
from bridge.core.reply import OUTCOME_UNKNOWN
from bridge.infra.journal import Journal, JournalEntry
from bridge.service.dedupe import RUNNING, Dedupe, DedupeKey
from bridge.service.outbox import Outbox
from bridge.service.ports import CaptureCloud, NoObserver, Observer, StatePublisher
from bridge.service.scheduler import Scheduler

log = logging.getLogger("bridge.service")

# The answer to a capture that was being sent when the bridge stopped (a crash, kill -9): it ends
# like a read timeout after sending, so flows need one rule for "unknown outcome".
INTERRUPTED = f"cloud unreachable: the bridge stopped while the cloud had the capture; {OUTCOME_UNKNOWN}"


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
        # defaults_for: the device's settings, what a command's missing fields become.
        self._rules = Rules(dict(devices or {}), guid_topic_ids, limits or Limits(), max_payload_bytes, defaults_for)
        self._max_payload = max_payload_bytes
        self._max_in_flight = max_in_flight
        self._max_backlog = max_backlog
        self._publish_pending = publish_pending
        self._park_when_closed = park_when_closed
        self._observer: Observer = observer or NoObserver()
        self._on_journal_writable = on_journal_writable
        self._clock = clock
        self._dedupe = Dedupe(dedupe_window)
        self._outbox = Outbox(journal, self._observer, publish=self._publish_committed, recovered=self._resume)
        self._scheduler: Scheduler[_Job] = Scheduler(self._run, max_in_flight, self._observer)
        self.closed = False
        self.finished = 0  # final states so far

    # --- intake ---------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Cloud calls under way."""
        return self._scheduler.in_flight

    @property
    def backlog(self) -> int:
        """Commands waiting for their device or for a free slot."""
        return self._scheduler.backlog

    @property
    def journal_ok(self) -> bool:
        """The journal can be written (else commands are parked and not acknowledged)."""
        return self._outbox.ok

    def flush(self) -> bool:
        """Commit the journal, then publish the states that waited for it (see outbox.py)."""
        return self._outbox.flush()

    async def watch_journal(self, interval: float = 2.0) -> None:
        """Notice a deleted or replaced journal file even while no command arrives."""
        await self._outbox.watch(interval)

    def submit(self, command: Command, journal_id: int | None = None) -> None:
        """Accept one command from MQTT; never blocks, never raises."""
        try:
            if not self._outbox.ok and journal_id is None:
                self._park(command)
                return
            self._submit(command, journal_id)
        except Exception:  # a bug here must not kill the MQTT loop
            log.exception("could not accept a command", extra={"device": command.device})

    def in_order(self, work: Callable[[], None]) -> None:
        """Work that must not overtake commands parked before it (a settings change): now, or after them."""
        parked = self._outbox.parked
        # Past the backlog a QoS 0 flood must not grow this without bound: it runs now instead.
        if parked and len(parked) < max(self._max_backlog, 1):
            parked.append(work)
            return
        try:
            work()
        except Exception:  # one bad change must not stop the commands behind it
            log.exception("ordered work failed")

    def record(self, command: Command) -> int | None:
        """Journal a command that will be submitted later (held at start); returns its journal id.

        Its PUBACK goes out with the next journal commit, so it must be durable now, not when it
        is submitted. None when there is no journal to write it to (or it is oversized: only its
        answer is kept, as in `submit`).
        """
        if not self._outbox.ok or len(command.payload) > self._max_payload:
            return None
        return self._outbox.add(command, command.payload)

    def discard(self, journal_id: int | None) -> None:
        """Forget a recorded command that will not be submitted (a stale retained copy)."""
        self._outbox.done(journal_id)

    def _park(self, command: Command) -> None:
        # Not durable, so not run: it is not acknowledged either, and the broker's in-flight window
        # stops it sending more. QoS 0 commands are not bounded by that window: shed past the backlog.
        if len(self._outbox.parked) >= max(self._max_backlog, 1):
            ctx = states.Context(command.device)
            job = _Job(command, ctx, None, self._clock(), ())
            overloaded = CloudError(ErrorCode.OVERLOADED, "journal cannot be written and the backlog is full")
            self._finish(job, states.error_state(ctx, overloaded))
            return
        self._outbox.parked.append(command)

    def _resume(self, parked: list[Command | Callable[[], None]]) -> None:
        for item in parked:
            if isinstance(item, Command):
                self.submit(item)
            else:
                self.in_order(item)
        if self._on_journal_writable is not None:
            try:
                self._on_journal_writable()
            except Exception:
                log.exception("journal recovery hook failed")

    def _submit(self, command: Command, journal_id: int | None) -> None:
        now = self._clock()
        taken = take(command.device, command.payload, self._rules)
        # A rejected command fires nothing, so it is no reason to refuse its corrected resend.
        keys = self._dedupe.keys(taken.key, command, taken.ctx.request_id) if taken.error is None else ()
        seen = self._dedupe.seen(command, keys, now)
        if seen is not None:
            if seen is not RUNNING:
                self._publisher.publish_state(command.device, seen, retain=states.retained(seen),
                                              response_topic=command.response_topic,
                                              correlation=command.correlation)
            self._outbox.done(journal_id)
            return
        if journal_id is None:
            # An oversized payload is refused without keeping it: the journal only needs its answer.
            journal_id = self._outbox.add(command, b"" if taken.oversized else command.payload)
        job = _Job(command, taken.ctx, journal_id, now, keys, taken.key, taken.capture, taken.error)
        self._dedupe.started(keys, job)
        if taken.error is not None:
            self._finish(job, states.error_state(taken.ctx, taken.error))
            return
        if self.closed and self._park_when_closed:
            # Shutting down: the journal keeps it for the next start; without one, say so now.
            if not self._outbox.enabled:
                self._finish(job, states.error_state(taken.ctx, CloudError(ErrorCode.OVERLOADED,
                                                                           "bridge is shutting down")))
            return
        self._schedule(job)

    def _schedule(self, job: _Job) -> None:
        scheduler = self._scheduler
        if scheduler.must_wait(job.key):
            if scheduler.backlog >= self._max_backlog:
                overloaded = CloudError(ErrorCode.OVERLOADED, f"backlog full ({self._max_backlog} commands waiting)")
                self._finish(job, states.error_state(job.ctx, overloaded))
                return
            if self._publish_pending:
                self._publish(job, states.pending_state(job.ctx), final=False)
            scheduler.enqueue(job)
        else:
            if self._publish_pending:
                self._publish(job, states.pending_state(job.ctx), final=False)
            scheduler.start(job)
        self._observer.load(scheduler.in_flight, scheduler.backlog)

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
                self._outbox.done(entry.id)
                if isinstance(entry.device, str):
                    ctx = states.Context(entry.device)
                    damaged = InvalidCommand(f"journal row could not be read ({type(exc).__name__})")
                    self._publish(_Job(Command(entry.device, b""), ctx, None, self._clock(), ()),
                                  states.error_state(ctx, damaged), final=True)
        if entries:
            log.info("journal: took back %d unfinished command(s) from the last run", len(entries))
            self._outbox.schedule_flush()

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
        elif entry.sent:
            self._interrupted(command, entry.id)
        else:
            self._submit(command, entry.id)

    def _interrupted(self, command: Command, journal_id: int) -> None:
        """Its Instruction may have reached the cloud before the bridge stopped: answered, never sent again."""
        taken = take(command.device, command.payload, self._rules)
        keys = self._dedupe.keys(taken.key, command, taken.ctx.request_id) if taken.error is None else ()
        job = _Job(command, taken.ctx, journal_id, self._clock(), keys, taken.key, taken.capture)
        self._dedupe.started(keys, job)  # a resend of its request_id gets this answer too
        self._finish(job, states.error_state(taken.ctx, CloudError(ErrorCode.CLOUD_UNREACHABLE, INTERRUPTED,
                                                                   sent=True)))

    # --- running ---------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        assert job.capture is not None
        assert job.ctx.asset_guid is not None
        started = self._clock()
        extra = {"device": job.command.device, "request_id": job.ctx.request_id}
        log.debug("cloud call: ActiveNewPhotograph %s %s", job.ctx.asset_guid, job.ctx.request, extra=extra)
        try:
            await self._outbox.sending(job.journal_id)  # durable before the first byte leaves
            reply = await self._cloud.capture(job.ctx.asset_guid, job.capture.api_params())
            state = states.reply_state(job.ctx, reply)
        except BridgeError as exc:
            state = states.error_state(job.ctx, exc)
        except asyncio.CancelledError:
            # Shutdown deadline: no state now; the next start answers it (sent: unknown outcome) or runs it.
            self._scheduler.release(job.key)
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
            self._scheduler.release(job.key)

    # --- answering -------------------------------------------------------------

    def _finish(self, job: _Job, state: dict[str, Any]) -> None:
        payload = states.encode(state)
        now = self._clock()
        self._dedupe.finished(job.keys, job, payload, now)
        status, error = state["status"], state["error"]
        self.finished += 1
        self._observer.finished(status, error, now - job.received)
        extra = {"device": job.command.device, "request_id": job.ctx.request_id, "error": error}
        if status == states.OK:
            log.info("capture ok, file %s", state["file_id"], extra=extra)
        else:
            log.warning("capture %s: %s: %s", status, error, state["message"], extra=extra)
        # Published by flush(), once the state is committed: a crash can then only repeat it.
        if not self._outbox.answered(job.journal_id, job, payload):
            self._publish(job, payload, final=True)

    def _publish_committed(self, job: object, payload: bytes) -> None:
        assert isinstance(job, _Job)
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
                on_acked=(lambda: self._outbox.done(journal_id)) if journal_id is not None else None,
            )
        except Exception:  # the publisher never raises by contract; a bug must not stop the others
            log.exception("could not publish a state", extra={"device": job.command.device})

    # --- shutdown --------------------------------------------------------------

    async def drain(self, deadline: float) -> int:
        """Stop taking work; wait up to `deadline` seconds for what runs and waits; return how many did not finish."""
        self.closed = True
        unfinished = await self._scheduler.drain(deadline)
        self._outbox.cancel_retry()
        return unfinished
