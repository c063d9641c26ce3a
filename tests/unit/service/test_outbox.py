"""The outbox alone: states and Instructions wait for their commit; a failed commit holds them back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bridge.core.messages import Command
from bridge.infra.journal import Journal
from bridge.service.outbox import Outbox
from bridge.service.ports import NoObserver
from tests.support.aio import run, settle


def test_a_state_is_published_only_after_the_commit_that_holds_it() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        published: list[bytes] = []
        outbox = Outbox(journal, NoObserver(), publish=lambda job, state: published.append(state),
                        recovered=lambda parked: None)
        entry = outbox.add(Command("d", b"{}"), b"{}")
        assert outbox.answered(entry, object(), b"state")
        assert published == []
        assert journal.unfinished() == []  # nothing committed yet
        await settle()  # the commit runs once per loop pass
        assert published == [b"state"]
        assert journal.unfinished()[0].state == b"state"

    run(go())


def test_the_sent_mark_waits_for_a_writable_journal(tmp_path: Path) -> None:
    async def go() -> None:
        journal = Journal(tmp_path / "j.sqlite")
        recovered: list[list[Command | Callable[[], None]]] = []
        outbox = Outbox(journal, NoObserver(), publish=lambda job, state: None, recovered=recovered.append)
        entry = outbox.add(Command("d", b"{}"), b"{}")
        assert outbox.flush()
        journal._db.execute("PRAGMA max_page_count = 1")  # every further write fails: SQLITE_FULL
        outbox.add(Command("d", b"x" * 20_000), b"x" * 20_000)
        marked = asyncio.ensure_future(outbox.sending(entry))
        await settle()
        assert not outbox.ok
        assert not marked.done()  # no Instruction without a durable mark
        outbox.parked.append(Command("later", b"{}"))
        journal._db.execute("PRAGMA max_page_count = 100000")
        assert outbox.flush()
        await settle()
        assert marked.done()
        assert journal.unfinished()[0].sent
        assert [[c.device for c in batch if isinstance(c, Command)] for batch in recovered] == [["later"]]
        outbox.cancel_retry()

    run(go())


def test_without_a_journal_nothing_waits() -> None:
    async def go() -> None:
        outbox = Outbox(None, NoObserver(), publish=lambda job, state: None, recovered=lambda parked: None)
        assert outbox.add(Command("d", b"{}"), b"{}") is None
        await outbox.sending(None)
        assert not outbox.answered(None, object(), b"state")  # the caller publishes at once
        assert outbox.flush()

    run(go())
