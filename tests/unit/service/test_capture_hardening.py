"""Poison input and faults at the service, journal, log and config boundaries (issue 10).

Real SQLite files (a full database is a real `SQLITE_FULL`, made with `max_page_count`),
fake cloud and publisher as in test_service.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Announcer, open_journal
from bridge.config import Config
from bridge.core import state as states
from bridge.core.command import decode_payload
from bridge.core.errors import CloudError, ConfigError, ErrorCode, InvalidCommand
from bridge.infra.journal import Journal, JournalError
from bridge.infra.logs import HumanFormatter, redact
from bridge.mqtt.adapter import response_topic_refusal, unpublishable
from bridge.service import capture as service_module
from tests.unit.service.test_capture import GUID, FakeCloud, FakePublisher, cmd, ok_reply, run, service, settle

# --- 2. lone surrogates --------------------------------------------------------------------


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


def test_a_paired_surrogate_escape_is_a_normal_character() -> None:
    assert decode_payload(b'{"request_id": "\\ud83d\\ude00"}') == {"request_id": "\U0001f600"}


def test_state_encoding_never_fails() -> None:
    ctx = states.Context("d", request_id="\ud800")
    payload = states.encode(states.error_state(ctx, InvalidCommand("x")))
    assert json.loads(payload)["request_id"] == "\ud800"  # escaped, still one JSON document


# --- 1. a row that cannot be replayed --------------------------------------------------------


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


# --- 3. journal faults -------------------------------------------------------------------------


def test_a_failed_commit_is_rolled_back_kept_and_applied_later(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal._db.execute("PRAGMA max_page_count = 3")  # the connection's own cap: SQLITE_FULL soon
    big = b"x" * 20_000
    entry = journal.add("d", big, None, None)
    with pytest.raises(JournalError, match="full"):
        journal.commit()
    assert journal.unfinished() == []  # rolled back: nothing half-written
    journal._db.execute("PRAGMA max_page_count = 100000")  # space is back
    journal.commit()
    assert [e.id for e in journal.unfinished()] == [entry]
    journal.answered(entry, b"state")
    journal.done([entry])
    journal.commit()
    assert journal.unfinished() == []


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
        assert len(cloud.calls) == 2  # the one accepted before the failure ran; the parked one did not
        assert [s["request_id"] for s in pub.finals()] == ["before"]  # its state waits for durability

        journal._db.execute("PRAGMA max_page_count = 100000")
        await asyncio.sleep(service_module.JOURNAL_RETRY + 0.3)  # ok: the retry timer is what is tested
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


def test_a_deleted_journal_file_is_recreated_with_what_it_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    ids = [journal.add("d", f'{{"request_id": "{i}"}}'.encode(), None, None) for i in range(50)]
    journal.commit()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR):
        journal.check()
    assert "was deleted" in caplog.text
    assert path.exists()
    journal.close()
    assert [e.id for e in Journal(path).unfinished()] == ids


def test_a_replaced_journal_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    journal.add("d", b"{}", None, None)
    journal.commit()
    other = tmp_path / "other"
    other.write_text("not ours")
    os.replace(other, path)
    with caplog.at_level(logging.ERROR):
        journal.commit()
    assert "replaced" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if ".replaced-" in p.name]
    journal.close()
    assert len(Journal(path).unfinished()) == 1


@pytest.mark.parametrize("where", ["under-a-file", "is-a-directory"])
def test_a_journal_that_cannot_be_opened_is_one_line_naming_the_setting(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "j.sqlite" if where == "under-a-file" else tmp_path
    config = Config.model_validate({"cloud": {"token": "t0k3n"}, "bridge": {"journal_path": str(path)}})
    with pytest.raises(ConfigError) as info:
        open_journal(config)
    message = str(info.value)
    assert message.startswith("bridge.journal_path: cannot open")
    assert "\n" not in message


# --- 6. de-duplication keeps running commands ---------------------------------------------------


def test_dedupe_never_forgets_a_running_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MAX_REMEMBERED", 10)

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
        assert len(svc._recent) <= 10  # the cap still holds for finished ones

    run(go())


# --- 7. one device, one GUID -------------------------------------------------------------------


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


# --- 8. smaller ---------------------------------------------------------------------------------


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


def test_control_characters_cannot_forge_log_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(HumanFormatter())
    logger = logging.getLogger("test.hardening.forge")
    logger.addHandler(handler)
    try:
        forged = "r1\n2026-11-29 00:00:00,000 ERROR   bridge: forged\x1b[31m\u2028"
        logger.warning("capture %s", forged, extra={"device": "d\r\n", "request_id": forged})
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\n") == 1  # one record, one line
    assert "\\n2026-11-29" in out
    assert "\\x1b" in out
    assert "\\u2028" in out


@pytest.mark.parametrize(
    ("section", "key", "url"),
    [("cloud", "base_url", "https://user:pa55word@cloud.example/OpenApi"),
     ("mqtt", "url", "mqtt://user:pa55word@broker:1883")],
)
def test_urls_with_credentials_are_refused_without_echoing_them(section: str, key: str, url: str) -> None:
    from bridge.config import load_config

    env = {f"CAPTURE_BRIDGE_{section.upper()}__{key.upper()}": url, "CAPTURE_BRIDGE_CLOUD__TOKEN": "t0k3n"}
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    message = str(info.value)
    assert message.startswith(f"{section}.{key}:")
    assert "credentials" in message
    assert "pa55word" not in message


# --- 5. Response Topic policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "refused"),
    [
        ("replies/abc", False),
        ("replies/#", True),
        ("replies/+/x", True),
        ("$SYS/broker", True),
        ("devices/bridge/state", True),
        ("devices/other/capture/state", True),
        ("devices", True),
        ("homeassistant/sensor/x/config", True),
        ("zigbee2mqtt/lamp/set", False),
        ("", True),
    ],
)
def test_response_topic_default_policy(topic: str, refused: bool) -> None:
    assert (response_topic_refusal(topic, ["#"], ["devices", "homeassistant"]) is not None) == refused


def test_response_topic_allow_list() -> None:
    allowed = ["replies/+", "app/#"]
    assert response_topic_refusal("replies/1", allowed, ["devices"]) is None
    assert response_topic_refusal("app/a/b", allowed, ["devices"]) is None
    assert "mqtt.response_topics" in str(response_topic_refusal("zigbee2mqtt/lamp/set", allowed, ["devices"]))
    assert response_topic_refusal("devices/x", ["#"], ["devices"]) is not None


@pytest.mark.parametrize("bad", ["a/#/b", "a+/b", "", "a/##"])
def test_response_topics_must_be_filters(bad: str) -> None:
    with pytest.raises(ValueError, match="response_topics"):
        Config.model_validate({"cloud": {"token": "t0k3n"}, "mqtt": {"response_topics": [bad]}})


# --- 4. discovery announcements are coalesced --------------------------------------------------


def test_announcements_coalesce_and_are_rate_limited() -> None:
    async def go() -> None:
        sent: list[tuple[str, Any]] = []

        bulk: list[bool] = []

        def send(topic: str, payload: bytes, **kw: Any) -> bool:
            sent.append((topic, kw["on_acked"]))
            bulk.append(kw["bulk"])
            return True

        def announce() -> None:
            announcer.publish("a", b"1", True)
            announcer.publish("b", b"2", True)

        now = [0.0]
        announcer = Announcer(announce, send, min_interval=5.0, clock=lambda: now[0])
        for _ in range(100):  # Home Assistant flapping
            announcer.request()
        assert announcer.count == 1
        assert len(sent) == 2
        for _, acked in sent:  # the broker has the first one; the second waits for the interval
            acked()
        assert announcer.count == 1
        now[0] = 5.0
        announcer.cancel()  # the real 5 s timer; the fake clock says it is due
        announcer.request()
        assert announcer.count == 2
        assert len(sent) == 4
        announcer.publish("settings", b"{}", True)  # outside an announcement: no ack hook
        assert sent[-1] == ("settings", None)
        # Announcements do not count towards back-pressure; a settings echo (one per client message) does.
        assert bulk == [True, True, True, True, False]

    run(go())


@pytest.mark.parametrize(
    ("topic", "why"),
    [("a/#", "wildcard"), ("a/+/b", "wildcard"), ("", "empty"), ("x" * 65536, "65,535"), ("a/\ud800", "UTF-8")],
)
def test_a_topic_paho_would_refuse_is_refused_before_it_is_queued(topic: str, why: str) -> None:
    assert why in (unpublishable(topic) or "")


def test_a_publishable_topic_passes() -> None:
    assert unpublishable("devices/truck-12/capture/state") is None
    assert unpublishable("x" * 65535) is None
