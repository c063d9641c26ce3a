"""The journal rule, in one place: no acknowledgement before the journal commit, no Instruction
before its `sent` mark, no state before its row.

Every command is journaled when it is accepted; it is marked `sent` (committed) before its
Instruction's first byte goes to the cloud; its final state is written to its row and
published only after the commit (a crash can then only repeat a publish, never lose a state);
the row is removed once the broker has the state. The MQTT adapter asks `flush` before it
acknowledges commands. While the journal cannot be written (disk full, file gone) `flush` says
so, the adapter stops acknowledging, and new commands are parked here, not run: nothing fires
that a crash could not take back. The commit is retried every second; everything resumes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from bridge.core.messages import Command
from bridge.infra.journal import Journal, JournalError
from bridge.service.ports import Observer

log = logging.getLogger("bridge.service")

# Seconds between attempts to write a journal that failed (disk full, I/O error).
JOURNAL_RETRY = 1.0


class Outbox:
    """Journal writes, the commit gate, states waiting for their commit, and parked commands."""

    def __init__(
        self,
        journal: Journal | None,
        observer: Observer,
        *,
        publish: Callable[[object, bytes], None],
        recovered: Callable[[list[Command | Callable[[], None]]], None],
    ) -> None:
        self._journal = journal
        self._observer = observer
        self._publish = publish  # (job, final state) once committed
        self._recovered = recovered  # the parked commands, once the journal is writable again
        self._to_publish: list[tuple[object, bytes]] = []
        self._marks: list[asyncio.Future[None]] = []  # `sending` calls waiting for their commit
        self._flush_scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self.ok = True
        # Commands not run while the journal cannot be written, and the ordered work behind them.
        self.parked: deque[Command | Callable[[], None]] = deque()

    @property
    def enabled(self) -> bool:
        """There is a journal."""
        return self._journal is not None

    def add(self, command: Command, payload: bytes) -> int | None:
        """Journal an accepted command (`payload` may be b"" when only its answer is kept)."""
        if self._journal is None:
            return None
        journal_id = self._journal.add(command.device, payload, command.response_topic, command.correlation)
        self.schedule_flush()
        return journal_id

    def done(self, journal_id: int | None) -> None:
        """Remove a row (its state reached the broker, or the command will never run)."""
        if journal_id is not None and self._journal is not None:
            self._journal.done([journal_id])
            self.schedule_flush()

    async def sending(self, journal_id: int | None) -> None:
        """Mark the command as being sent; return once the mark is committed (at once without a journal).

        Marks of one loop pass share one commit. While the journal cannot be written this waits:
        an Instruction is never sent without a durable mark.
        """
        if journal_id is None or self._journal is None:
            return
        self._journal.sending(journal_id)
        mark: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append(mark)
        self.schedule_flush()
        await mark

    def answered(self, journal_id: int | None, job: object, state: bytes) -> bool:
        """Write the final state to its row; it is published after the commit. False: publish now."""
        if journal_id is None or self._journal is None:
            return False
        self._journal.answered(journal_id, state)
        self._to_publish.append((job, state))
        self.schedule_flush()
        return True

    def schedule_flush(self) -> None:
        """Commit at the end of this loop pass (once, however many writes ask)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> bool:
        """Commit the journal, then publish the states that waited for it.

        Returns False, and keeps everything for the next attempt, when the journal cannot be
        written; never raises.
        """
        self._flush_scheduled = False
        if self._journal is not None:
            try:
                self._journal.commit()
            except JournalError as exc:
                self._failed(str(exc))
                return False
            except Exception:  # a bug in the journal must not stop acks and states for good
                log.exception("journal commit failed")
                self._failed("internal error")
                return False
            if not self.ok:
                self._recover()
        if self._marks:
            marks, self._marks = self._marks, []
            for mark in marks:
                if not mark.done():  # a cancelled capture's mark
                    mark.set_result(None)
        if self._to_publish:
            ready, self._to_publish = self._to_publish, []
            for job, payload in ready:
                self._publish(job, payload)
        return True

    def _failed(self, reason: str) -> None:
        if self.ok:
            self.ok = False
            path = self._journal.path if self._journal is not None else "?"
            log.error("journal %s cannot be written (%s): not acknowledging or taking commands until it can;"
                      " retrying every %.0fs", path, reason, JOURNAL_RETRY)
            self._observer.journal_writable(False)
        if self._retry is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next flush retries
                self._retry = asyncio.get_running_loop().call_later(JOURNAL_RETRY, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.flush()

    def _recover(self) -> None:
        self.ok = True
        self.cancel_retry()
        log.warning("journal writable again: taking %d parked command(s) and acknowledging again",
                    len(self.parked))
        self._observer.journal_writable(True)
        parked, self.parked = self.parked, deque()
        self._recovered(list(parked))

    def cancel_retry(self) -> None:
        """No more commit retries (shutdown)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    async def watch(self, interval: float = 2.0) -> None:
        """Notice a deleted or replaced journal file even while no command arrives."""
        while True:
            await asyncio.sleep(interval)
            if self._journal is not None and self.ok:
                self.flush()
