"""CaptureService against poison input and journal faults: nothing fires twice, nothing is lost.

Real SQLite files (a full database is a real `SQLITE_FULL`, made with `max_page_count`),
the fake cloud and publisher of tests/support/fakes.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.core.errors import CloudError, ErrorCode
from bridge.core.redact import redact
from bridge.infra.journal import Journal
from bridge.service import dedupe as dedupe_module
from bridge.service import outbox as outbox_module
from tests.support.aio import run, settle
from tests.support.fakes import GUID, FakeCloud, FakePublisher, cmd, ok_reply, service

# --- lone surrogates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b'{"request_id": "\\ud800"}', b'{"request_id": "a\\udfffb"}', b'{"\\ud800": 1}', b'{"camera": "\\udc00"}'],
)
def test_lone_surrogate_is_invalid_payload_and_fires_nothing(payload: bytes) -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        journal = Journal(":memory:")
        svc = service(cloud, pub, journal=journal)
        svc.submit(cmd("truck-12", payload))
        await settle()
        assert cloud.calls == []
        [state] = pub.finals()
        assert state["error"] == "invalid_payload"
        assert state["request_id"] is None
        pub.published[0].payload.decode("utf-8")  # valid UTF-8 on the wire
        pub.ack_all()
        await settle()
        assert journal.unfinished() == []  # answered and gone: nothing fires again at restart

    run(go())


# --- a row that cannot be replayed -----------------------------------------------------------


def test_a_damaged_journal_row_is_logged_removed_and_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    good = journal.add("truck-12", b'{"request_id": "good"}', None, None)
    journal.commit()
    journal.close()
    with sqlite3.connect(path) as db:  # written by something else: a number where the payload belongs
        db.execute("INSERT INTO commands (id, device, payload) VALUES (99, 'van-3', 7)")

    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        journal = Journal(path)
        svc = service(cloud, pub, journal=journal)
        svc.replay(journal.unfinished())
        await settle()
        seen = sorted((p.device, str(p.state["request_id"])) for p in pub.published)
        assert seen == [("truck-12", "good"), ("van-3", "None")]
        assert pub.states("van-3")[0]["error"] == "invalid_payload"  # answered: its sender learns of it
        pub.ack_all()
        await settle()
        assert journal.unfinished() == []
        journal.close()

    with caplog.at_level(logging.ERROR):
        run(go())
    assert "row 99 cannot be replayed" in caplog.text
    assert good == 1


def test_replay_survives_a_publisher_that_raises() -> None:
    class Exploding(FakePublisher):
        def publish_state(self, device: str, payload: bytes, **kw: Any) -> None:
            if device == "truck-12":
                raise ValueError("Invalid topic.")
            super().publish_state(device, payload, **kw)

    async def go() -> None:
        journal = Journal(":memory:")
        for device in ("truck-12", "van-3"):
            entry = journal.add(device, b"{}", None, None)
            journal.answered(entry, b'{"status":"ok"}')
        journal.commit()
        pub = Exploding()
        svc = service(FakeCloud(auto=True), pub, journal=journal)
        svc.replay(journal.unfinished())
        await settle()
        assert [p.device for p in pub.published] == ["van-3"]

    run(go())


# --- journal faults --------------------------------------------------------------------------


def test_while_the_journal_is_full_nothing_is_acked_run_or_published_then_it_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        journal = Journal(tmp_path / "j.sqlite")
        resumed: list[bool] = []
        svc = service(cloud, pub, journal=journal, on_journal_writable=lambda: resumed.append(True))
        svc.submit(cmd("truck-12", {"request_id": "before"}))
        await settle()
        assert svc.flush() is True
        assert [s["request_id"] for s in pub.finals()] == ["before"]

        journal._db.execute("PRAGMA max_page_count = 2")
        padded = b'{"request_id": "' + b"x" * 100 + b'"' + b" " * 20_000 + b"}"  # needs new pages
        svc.submit(cmd("van-3", padded))
        await settle()
        assert svc.flush() is False  # the adapter does not acknowledge
        assert not svc.journal_ok
        svc.submit(cmd("car-7", {"request_id": "parked"}))
        await settle()
        # Neither reached the cloud: the one accepted before the failure waits for a durable `sent`
        # mark (no Instruction without one), the one after it is parked.
        assert len(cloud.calls) == 1
        assert [s["request_id"] for s in pub.finals()] == ["before"]  # its state waits for durability

        journal._db.execute("PRAGMA max_page_count = 100000")
        await asyncio.sleep(outbox_module.JOURNAL_RETRY + 0.3)  # ok: the retry timer is what is tested
        await settle()
        assert svc.journal_ok
        assert resumed == [True]
        assert len(cloud.calls) == 3
        await settle()
        assert sorted(str(s["request_id"]) for s in pub.finals()) == ["before", "parked", "x" * 100]

    with caplog.at_level(logging.WARNING):
        run(go())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # said once, not per retry
    assert "cannot be written" in errors[0].getMessage()
    assert "writable again" in caplog.text


# --- de-duplication keeps running commands ---------------------------------------------------


def test_dedupe_never_forgets_a_running_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupe_module, "MAX_REMEMBERED", 10)

    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, devices={})
        svc.submit(cmd(GUID, {"request_id": "long"}))
        await settle()
        for i in range(60):  # many newer commands finish on other devices
            svc.submit(cmd(f"00000000-0000-4000-8000-{i:012d}", {"request_id": f"n{i}"}))
            await settle()
            cloud.calls[-1].release()
            await settle()
        svc.submit(cmd(GUID, {"request_id": "long"}))  # the resend of the one still running
        await settle()
        cloud.calls[0].release()  # the first ends; a resend that was not recognised would start now
        await settle()
        assert [c.guid for c in cloud.calls].count(GUID) == 1
        assert len(pub.finals(GUID)) == 1
        assert len(svc._dedupe._recent) <= 10  # the cap still holds for finished ones

    run(go())


# --- one device, one GUID --------------------------------------------------------------------


def test_alias_and_guid_spellings_are_one_device() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"request_id": "a"}))
        svc.submit(cmd(GUID.lower(), {"request_id": "b"}))
        svc.submit(cmd(GUID.upper(), {"request_id": "c"}))
        svc.submit(cmd(GUID.upper(), {"request_id": "a"}))  # same request_id through another name
        await settle()
        assert len(cloud.calls) == 1  # one capture at a time on the one camera
        for _ in range(3):
            assert sum(not c.finished for c in cloud.calls) == 1
            cloud.calls[-1].release()
            await settle()
        assert len(cloud.calls) == 3  # the resend of "a" under the GUID was a duplicate
        # each state on the topic the command came in on, in order
        assert [(p.device, p.state["request_id"]) for p in pub.published] == [
            ("truck-12", "a"), (GUID.lower(), "b"), (GUID.upper(), "c")
        ]

    run(go())


# --- smaller ---------------------------------------------------------------------------------


def test_an_oversized_payload_is_not_journaled() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        pub = FakePublisher()
        svc = service(FakeCloud(auto=True), pub, journal=journal, max_payload_bytes=1000)
        svc.submit(cmd("truck-12", b'{"request_id": "' + b"x" * 5_000_000 + b'"}'))
        await settle()
        [row] = journal.unfinished()
        assert row.payload == b""
        assert row.state is not None
        assert json.loads(row.state)["error"] == "invalid_payload"
        assert pub.finals()[0]["error"] == "invalid_payload"

    run(go())


def test_cloud_text_echoing_a_secret_is_redacted_in_the_state() -> None:
    redact.add("t0ps3cr3t-token")
    redact.add("5f4dcc3b5aa765d61d8327deb882cf99")

    async def go() -> None:
        echo = CloudError(ErrorCode.BAD_REQUEST, "bad FTokenID t0ps3cr3t-token for 5f4dcc3b5aa765d61d8327deb882cf99",
                          result=102)
        cloud, pub = FakeCloud(auto=True, outcome=lambda n: echo if n == 1 else ok_reply("t0ps3cr3t-token")), \
            FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"request_id": "1"}))
        await settle()
        svc.submit(cmd("truck-12", {"request_id": "2"}))
        await settle()
        text = b" ".join(p.payload for p in pub.published).decode()
        assert "t0ps3cr3t" not in text
        assert "5f4dcc3b" not in text
        assert "***" in text

    run(go())


def test_a_settings_change_waits_behind_commands_parked_while_the_journal_is_full(tmp_path: Path) -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        journal = Journal(tmp_path / "j.sqlite")
        settings = {"count": 1}
        svc = service(cloud, pub, journal=journal, defaults_for=lambda device: settings)
        journal._db.execute("PRAGMA max_page_count = 2")
        svc.submit(cmd("van-3", b'{"request_id": "first"' + b" " * 20_000 + b"}"))  # needs new pages
        await settle()
        assert svc.flush() is False
        svc.submit(cmd("car-7", {"request_id": "parked"}))
        svc.in_order(lambda: settings.update(count=4))  # sent after the parked command
        assert settings["count"] == 1  # not applied before it
        svc.submit(cmd("car-7", {"request_id": "after"}))
        journal._db.execute("PRAGMA max_page_count = 100000")
        await asyncio.sleep(outbox_module.JOURNAL_RETRY + 0.3)  # ok: the retry timer is what is tested
        await settle()
        counts = {c.params["FCount"] for c in cloud.calls}
        by_id = {s["request_id"]: s["request"]["FCount"] for s in pub.finals()}
        assert by_id["first"] == 1
        assert by_id["parked"] == 1
        assert by_id["after"] == 4
        assert counts == {1, 4}

    run(go())
