"""The wiring in bridge.app: opening the journal, and coalescing discovery announcements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.bootstrap import open_journal, open_stores
from bridge.config import Config
from bridge.core.errors import ConfigError
from bridge.features.homeassistant import Announcer
from bridge.infra.journal import written_by_an_older_bridge
from tests.support.aio import run
from tests.support.settings_record import write_older_journal


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


def test_the_legacy_import_is_for_an_upgrade_only_and_the_journal_is_marked_after(tmp_path: Path) -> None:
    def config(name: str) -> Config:
        return Config.model_validate({"cloud": {"token": "t0k3n"},
                                      "bridge": {"journal_path": str(tmp_path / name / "journal.sqlite")}})

    journal, settings = open_stores(config("fresh"))  # a fresh install: its journal is created now
    assert journal is not None
    assert not settings.load().import_legacy
    assert not written_by_an_older_bridge(tmp_path / "fresh" / "journal.sqlite")
    write_older_journal(tmp_path / "upgrade" / "journal.sqlite")
    _, settings = open_stores(config("upgrade"))
    assert settings.load().import_legacy
    assert not written_by_an_older_bridge(tmp_path / "upgrade" / "journal.sqlite")
    assert (tmp_path / "upgrade" / "journal.settings.sqlite").is_file()
