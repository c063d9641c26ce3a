"""CaptureService with a fake cloud (gated by asyncio.Event) and a fake publisher."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.core.command import Limits
from bridge.core.devices import MAX_DEVICE_ID, resolve_device
from bridge.core.errors import CloudError, ErrorCode, UnknownDevice
from bridge.core.messages import Command
from bridge.core.reply import DeviceReply, InstructionReply
from bridge.infra.journal import Journal
from tests.support.aio import run, settle
from tests.support.fakes import (
    DEVICES,
    GUID,
    GUID2,
    GUID3,
    FakeCloud,
    FakePublisher,
    Published,
    cmd,
    service,
)

# --- resolve_device ----------------------------------------------------------------------


def test_resolve_device_from_the_map() -> None:
    assert resolve_device("truck-12", DEVICES) == GUID
    assert resolve_device("truck-12", DEVICES, guid_topic_ids=False) == GUID


def test_resolve_device_guid_topic_id() -> None:
    assert resolve_device(GUID2, {}) == GUID2
    assert resolve_device(GUID2.upper(), {}) == GUID2.upper()


def test_resolve_device_guid_topic_ids_off() -> None:
    with pytest.raises(UnknownDevice) as info:
        resolve_device(GUID2, {}, guid_topic_ids=False)
    assert info.value.code is ErrorCode.UNKNOWN_DEVICE


@pytest.mark.parametrize(
    "device",
    ["nope", "a64b2e58-9305-4a01-9c51-09220512394", "a64b2e58930549019c51092205123945", "x" * (MAX_DEVICE_ID + 1)],
    ids=["name", "short-guid", "no-dashes", "too-long"],
)
def test_resolve_device_unknown(device: str) -> None:
    with pytest.raises(UnknownDevice):
        resolve_device(device, DEVICES)


def test_resolve_device_map_wins_over_guid() -> None:
    assert resolve_device(GUID, {GUID: GUID2}) == GUID2


# --- one command, one final state --------------------------------------------------------


def test_ok_command() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"count": 2, "request_id": "r-1"}))
        await settle()
        assert len(cloud.calls) == 1
        assert cloud.calls[0].guid == GUID
        assert cloud.calls[0].params == {
            "FCameraID": "0",
            "FType": 1,
            "FCount": 2,
            "FDuration": 0,
            "FResolution": 2,
            "FInterval": 0,
        }
        assert pub.published == []  # nothing before the cloud answers (publish_pending off)
        assert svc.in_flight == 1
        cloud.calls[0].release()
        await settle()
        assert svc.in_flight == 0
        [p] = pub.published
        assert p.device == "truck-12"
        assert p.retain is True
        state = p.state
        assert state["status"] == "ok"
        assert state["file_id"] == "file-1"
        assert state["request_id"] == "r-1"
        assert state["asset_guid"] == GUID
        assert state["device"] == "truck-12"
        assert state["request"] == cloud.calls[0].params

    run(go())


@pytest.mark.parametrize(
    ("outcome", "status", "error"),
    [
        (CloudError(ErrorCode.DEVICE_OFFLINE, "offline (Result 111)", result=111), "error", "device_offline"),
        (CloudError(ErrorCode.CLOUD_UNREACHABLE, "refused"), "error", "cloud_unreachable"),
        (RuntimeError("bug"), "error", "cloud_error"),
        (InstructionReply("ok", "1", "(1,1,001,CAMERA,9,4,1,)", DeviceReply(1, "1", None)), "busy", "camera_busy"),
    ],
    ids=["cloud-error", "unreachable", "unexpected-exception", "busy"],
)
def test_every_outcome_is_one_final_state(outcome: InstructionReply | BaseException, status: str, error: str) -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True, outcome=lambda n: outcome), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd())
        await settle()
        assert len(pub.published) == 1
        assert pub.states()[0]["status"] == status
        assert pub.states()[0]["error"] == error
        assert svc.in_flight == 0

    run(go())


def test_many_commands_each_get_exactly_one_final_state() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, max_in_flight=2)
        for i in range(10):
            svc.submit(cmd(["truck-12", "van-3", "car-7"][i % 3], {"request_id": f"r-{i}"}))
        svc.submit(cmd("truck-12", b"junk"))
        svc.submit(cmd("ghost", b"{}"))
        for _ in range(10):
            await settle()
        finals = pub.finals()
        assert sorted(s["request_id"] or "" for s in finals) == sorted([f"r-{i}" for i in range(10)] + ["", ""])
        assert len(cloud.calls) == 10
        assert svc.in_flight == 0
        assert svc.backlog == 0

    run(go())


def test_invalid_payload_never_reaches_the_cloud() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"count": 0, "request_id": "bad-1"}))
        svc.submit(cmd("van-3", b"not json"))
        await settle()
        assert cloud.calls == []
        first, second = pub.states()
        assert first["error"] == "invalid_payload"
        assert first["status"] == "error"
        assert first["code"] is None
        assert first["request_id"] == "bad-1"  # echoed even though the payload was rejected
        assert first["message"].startswith("count:")
        assert first["request"] is None
        assert second["error"] == "invalid_payload"
        assert second["device"] == "van-3"

    run(go())


def test_payload_size_limit_and_limits_are_applied() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, max_payload_bytes=64, limits=Limits(max_count=3))
        svc.submit(cmd("truck-12", {"request_id": "x" * 80}))
        svc.submit(cmd("van-3", {"count": 4}))
        svc.submit(cmd("car-7", {"count": 3}))
        await settle()
        states = pub.states()
        assert states[0]["error"] == "invalid_payload"
        assert states[0]["message"].startswith("payload:")
        assert states[1]["error"] == "invalid_payload"
        assert states[1]["message"].startswith("count:")
        assert states[2]["status"] == "ok"
        assert len(cloud.calls) == 1

    run(go())


def test_unknown_device() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("ghost", {"request_id": "g-1"}))
        await settle()
        assert cloud.calls == []
        [state] = pub.states()
        assert state["error"] == "unknown_device"
        assert state["asset_guid"] is None
        assert state["request_id"] == "g-1"

    run(go())


def test_invalid_payload_wins_over_unknown_device() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("ghost", b"[]"))
        await settle()
        assert [s["error"] for s in pub.states()] == ["invalid_payload"]
        assert cloud.calls == []

    run(go())


def test_guid_topic_id_is_the_asset_guid() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd(GUID2))
        await settle()
        assert [c.guid for c in cloud.calls] == [GUID2]
        assert pub.states()[0]["asset_guid"] == GUID2
        assert pub.published[0].device == GUID2

    run(go())


def test_guid_topic_ids_off() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, guid_topic_ids=False)
        svc.submit(cmd(GUID2))
        await settle()
        assert cloud.calls == []
        assert pub.states()[0]["error"] == "unknown_device"

    run(go())


# --- ordering and limits ---------------------------------------------------------------------


def test_per_device_commands_run_one_at_a_time_in_order() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        for i in range(3):
            svc.submit(cmd("truck-12", {"count": i + 1}))
        await settle()
        assert len(cloud.calls) == 1
        assert svc.backlog == 2
        assert cloud.calls[0].params["FCount"] == 1
        cloud.calls[0].release()
        await settle()
        assert cloud.calls[0].finished
        assert len(cloud.calls) == 2
        assert cloud.calls[1].params["FCount"] == 2
        assert len(pub.published) == 1
        cloud.calls[1].release()
        await settle()
        assert len(cloud.calls) == 3
        assert cloud.calls[2].params["FCount"] == 3
        cloud.calls[2].release()
        await settle()
        assert [s["request"]["FCount"] for s in pub.finals()] == [1, 2, 3]
        assert cloud.peak == 1
        assert svc.backlog == 0

    run(go())


def test_other_devices_do_not_wait() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12"))
        svc.submit(cmd("van-3"))
        await settle()
        assert sorted(c.guid for c in cloud.calls) == sorted([GUID, GUID2])
        assert cloud.calls[1].guid == GUID2
        cloud.calls[1].release()
        await settle()
        assert [p.device for p in pub.published] == ["van-3"]  # not held back by truck-12
        cloud.calls[0].release()
        await settle()
        assert len(pub.published) == 2

    run(go())


def test_max_in_flight_across_devices() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, max_in_flight=2)
        for device in ("truck-12", "van-3", "car-7"):
            svc.submit(cmd(device))
        await settle()
        assert len(cloud.calls) == 2
        assert svc.in_flight == 2
        assert svc.backlog == 1
        cloud.calls[0].release()
        await settle()
        assert len(cloud.calls) == 3
        assert cloud.calls[2].guid == GUID3
        assert cloud.active == 2
        for call in cloud.calls:
            call.release()
        await settle()
        assert cloud.peak == 2
        assert len(pub.finals()) == 3

    run(go())


def test_backlog_full_is_overloaded_at_once() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, max_in_flight=1, max_backlog=1)
        svc.submit(cmd("truck-12"))
        svc.submit(cmd("van-3"))
        svc.submit(cmd("car-7", {"request_id": "shed"}))
        # answered synchronously inside submit: no await needed
        [state] = pub.states()
        assert state["device"] == "car-7"
        assert state["status"] == "error"
        assert state["error"] == "overloaded"
        assert state["request_id"] == "shed"
        await settle()
        assert len(cloud.calls) == 1
        cloud.calls[0].release()
        await settle()
        assert len(cloud.calls) == 2
        assert cloud.calls[1].guid == GUID2
        cloud.calls[1].release()
        await settle()
        assert all(c.guid != GUID3 for c in cloud.calls)

    run(go())


def test_zero_backlog_sheds_a_second_command_for_a_busy_device() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, max_backlog=0)
        svc.submit(cmd("truck-12", {"count": 1}))
        svc.submit(cmd("truck-12", {"count": 2}))
        assert [s["error"] for s in pub.states()] == ["overloaded"]
        await settle()
        cloud.calls[0].release()
        await settle()
        assert len(cloud.calls) == 1

    run(go())


# --- duplicates --------------------------------------------------------------------------


def test_request_id_duplicate_while_running_is_dropped() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        svc.submit(cmd("truck-12", {"request_id": "r-1", "count": 2}))
        await settle()
        assert len(cloud.calls) == 1
        assert svc.backlog == 0
        cloud.calls[0].release()
        await settle()
        assert len(cloud.calls) == 1
        assert len(pub.published) == 1

    run(go())


def test_request_id_duplicate_after_finishing_republishes_the_first_state() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        await settle()
        svc.submit(cmd("truck-12", {"request_id": "r-1"}, response_topic="reply/here", correlation=b"c-2"))
        await settle()
        assert len(cloud.calls) == 1
        first, again = pub.published
        assert again.payload == first.payload  # byte for byte the first state
        assert again.response_topic == "reply/here"
        assert again.correlation == b"c-2"

    run(go())


def test_request_id_is_per_device() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        svc.submit(cmd("van-3", {"request_id": "r-1"}))
        await settle()
        assert len(cloud.calls) == 2

    run(go())


def test_request_id_forgotten_after_the_window() -> None:
    now = [0.0]

    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, dedupe_window=60.0, clock=lambda: now[0])
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        await settle()
        now[0] = 61.0
        svc.submit(cmd("van-3", {"request_id": "other"}))  # any submit forgets what expired
        await settle()
        now[0] = 62.0
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        await settle()
        assert len(cloud.calls) == 3

    run(go())


def test_request_id_expires_without_any_other_command() -> None:
    now = [0.0]

    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, dedupe_window=60.0, clock=lambda: now[0])
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        await settle()
        now[0] = 61.0
        svc.submit(cmd("truck-12", {"request_id": "r-1"}))
        await settle()
        assert len(cloud.calls) == 2

    run(go())


def test_dup_message_while_running_is_dropped_but_a_new_identical_one_runs() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        payload = b'{"count": 2}'
        svc.submit(Command("truck-12", payload))
        svc.submit(Command("truck-12", payload, dup=True))
        await settle()
        assert len(cloud.calls) == 1
        assert svc.backlog == 0
        svc.submit(Command("truck-12", payload))  # sent again on purpose: a new capture
        await settle()
        assert svc.backlog == 1
        cloud.calls[0].release()
        await settle()
        assert len(cloud.calls) == 2
        cloud.calls[1].release()
        await settle()
        assert len(pub.finals()) == 2

    run(go())


def test_dup_message_after_finishing_runs_again() -> None:
    """Payloads are remembered only while they run (a broker redelivers only unacknowledged
    commands); a request_id is what makes a finished command recognisable."""

    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(Command("truck-12", b'{"count": 2}'))
        await settle()
        svc.submit(Command("truck-12", b'{"count": 2}', dup=True))
        await settle()
        assert len(cloud.calls) == 2
        assert len(pub.finals()) == 2

    run(go())


# --- pending, response topic ------------------------------------------------------------


def test_publish_pending_comes_before_the_final_state() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, publish_pending=True)
        svc.submit(cmd("truck-12", {"request_id": "p-1"}, response_topic="resp", correlation=b"c"))
        svc.submit(cmd("truck-12", {"request_id": "p-2"}))  # queued: pending too
        await settle()
        assert [s["status"] for s in pub.states()] == ["pending", "pending"]
        assert pub.published[0].response_topic is None  # only the final state goes to the response topic
        cloud.calls[0].release()
        await settle()
        cloud.calls[1].release()
        await settle()
        assert [(s["status"], s["request_id"]) for s in pub.states()] == [
            ("pending", "p-1"),
            ("pending", "p-2"),
            ("ok", "p-1"),
            ("ok", "p-2"),
        ]
        assert pub.published[2].response_topic == "resp"
        assert pub.published[2].correlation == b"c"

    run(go())


def test_no_pending_for_rejected_commands() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, publish_pending=True)
        svc.submit(cmd("truck-12", b"junk"))
        await settle()
        assert [s["status"] for s in pub.states()] == ["error"]

    run(go())


# --- journal --------------------------------------------------------------------------------


def test_journal_lifecycle() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        cloud, pub = FakeCloud(), FakePublisher()
        seen_at_publish: list[bytes | None] = []

        def look(p: Published) -> None:
            [entry] = journal.unfinished()
            seen_at_publish.append(entry.state)

        pub.hook = look
        svc = service(cloud, pub, journal=journal)
        svc.submit(cmd("truck-12", {"request_id": "j-1"}, response_topic="rt", correlation=b"cd"))
        await settle()
        [entry] = journal.unfinished()
        assert entry.device == "truck-12"
        assert json.loads(entry.payload) == {"request_id": "j-1"}
        assert entry.response_topic == "rt"
        assert entry.correlation == b"cd"
        assert entry.state is None
        cloud.calls[0].release()
        await settle()
        [p] = pub.published
        assert seen_at_publish == [p.payload]  # recorded before it was published
        assert p.on_acked is not None
        assert len(journal.unfinished()) == 1  # not acked yet
        p.on_acked()
        svc.flush()
        assert journal.unfinished() == []
        journal.close()

    run(go())


def test_a_held_command_is_durable_before_it_is_submitted() -> None:
    """At start commands wait for the settings, but their PUBACK goes with the next commit: journal them now."""

    async def go() -> None:
        journal = Journal(":memory:")
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        held = cmd("truck-12", {"request_id": "h-1"})
        stale = cmd("truck-12", {"request_id": "h-2"})
        held_id, stale_id = svc.record(held), svc.record(stale)
        assert svc.flush()
        # A crash now (after the acks) must leave both for the next start.
        assert [json.loads(e.payload)["request_id"] for e in journal.unfinished()] == ["h-1", "h-2"]
        svc.discard(stale_id)
        svc.submit(held, held_id)
        await settle()
        [entry] = journal.unfinished()  # submitted under its own row, not written twice
        assert entry.id == held_id
        assert len(cloud.calls) == 1
        journal.close()

    run(go())


def test_journal_rejected_commands_are_recorded_too(tmp_path: Path) -> None:
    async def go() -> None:
        journal = Journal(tmp_path / "j" / "journal.sqlite")
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        svc.submit(cmd("ghost"))
        svc.submit(cmd("truck-12", b"junk"))
        await settle()
        entries = journal.unfinished()
        assert len(entries) == 2
        assert all(e.state is not None for e in entries)
        pub.ack_all()
        svc.flush()
        assert journal.unfinished() == []
        journal.close()

    run(go())


def test_journal_flush_happens_by_itself() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        svc.submit(cmd())
        await settle()
        pub.ack_all()
        for _ in range(100):
            if not journal.unfinished():
                break
            await asyncio.sleep(0.01)  # ok: polling for the flush timer, with a bound of 100 rounds
        assert journal.unfinished() == []

    run(go())


def test_pending_state_has_no_ack_hook() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, journal=journal, publish_pending=True)
        svc.submit(cmd())
        await settle()
        [pending] = pub.published
        assert pending.on_acked is None
        cloud.calls[0].release()
        await settle()
        assert pub.published[1].on_acked is not None

    run(go())


def test_duplicate_is_removed_from_the_journal() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        first = journal.add("truck-12", b'{"request_id": "d"}', None, None)
        second = journal.add("truck-12", b'{"request_id": "d"}', None, None)
        svc.submit(cmd("truck-12", {"request_id": "d"}), journal_id=first)
        svc.submit(cmd("truck-12", {"request_id": "d"}), journal_id=second)
        await settle()
        assert [e.id for e in journal.unfinished()] == [first]

    run(go())


def test_replay() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        rerun = journal.add("truck-12", b'{"count": 2, "request_id": "again"}', "rt", b"c1")
        answered = journal.add("van-3", b'{"request_id": "done"}', None, None)
        old_state = b'{"status":"ok","request_id":"done"}'
        journal.answered(answered, old_state)
        journal.commit()

        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        svc.replay(journal.unfinished())
        await settle()
        # the answered one: its state published again, verbatim, to the same device
        [republished] = pub.published
        assert republished.device == "van-3"
        assert republished.payload == old_state
        assert republished.on_acked is not None
        # the other one runs again
        [call] = cloud.calls
        assert call.guid == GUID
        assert call.params["FCount"] == 2
        call.release()
        await settle()
        final = pub.published[1]
        assert final.device == "truck-12"
        assert final.state["request_id"] == "again"
        assert final.response_topic == "rt"
        assert final.correlation == b"c1"
        # same rows, no new ones; both now have a state
        entries = journal.unfinished()
        assert [e.id for e in entries] == [rerun, answered]
        assert entries[0].state == final.payload
        pub.ack_all()
        svc.flush()
        assert journal.unfinished() == []

    run(go())


def test_replay_nothing() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, journal=Journal(":memory:"))
        svc.replay([])
        await settle()
        assert pub.published == []
        assert cloud.calls == []

    run(go())


# --- drain -----------------------------------------------------------------------------------


def test_drain_waits_for_running_commands() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(cmd("truck-12"))
        svc.submit(cmd("van-3"))
        await settle()
        drain = asyncio.create_task(svc.drain(5.0))
        await settle()
        assert not drain.done()
        for call in cloud.calls:
            call.release()
        assert await drain == 0
        assert len(pub.finals()) == 2
        assert svc.closed

    run(go())


def test_drain_waits_for_queued_commands_too() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        cloud.auto = False
        svc.submit(cmd("truck-12", {"count": 1}))
        svc.submit(cmd("truck-12", {"count": 2}))
        await settle()
        cloud.auto = True
        drain = asyncio.create_task(svc.drain(5.0))
        cloud.calls[0].release()
        assert await drain == 0
        assert len(cloud.calls) == 2
        assert len(pub.finals()) == 2

    run(go())


def test_drain_cancels_at_the_deadline_and_counts() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        cloud, pub = FakeCloud(), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        svc.submit(cmd("truck-12", {"count": 1}))
        svc.submit(cmd("truck-12", {"count": 2}))  # waits behind the first
        svc.submit(cmd("van-3"))
        await settle()
        cloud.calls[1].release()  # van-3 finishes
        await settle()
        assert len(pub.finals()) == 1
        assert await svc.drain(0.05) == 2  # one running, one waiting
        assert cloud.calls[0].finished  # its task was cancelled
        assert len(pub.finals()) == 1  # no state for the cancelled ones...
        assert len(journal.unfinished()) == 3  # ...the journal keeps them for the next start
        assert svc.in_flight == 0
        assert svc.backlog == 0
        assert len(cloud.calls) == 2  # the waiting one never started

    run(go())


def test_after_drain_new_commands_are_journaled_or_refused() -> None:
    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        assert await svc.drain(0.1) == 0
        svc.submit(cmd())
        await settle()
        assert cloud.calls == []
        [state] = pub.states()
        assert state["error"] == "overloaded"

        journal = Journal(":memory:")
        pub2 = FakePublisher()
        svc2 = service(cloud, pub2, journal=journal)
        await svc2.drain(0.1)
        svc2.submit(cmd())
        await settle()
        assert pub2.published == []
        assert len(journal.unfinished()) == 1
        assert cloud.calls == []

    run(go())


def test_corrected_resend_with_same_request_id_runs() -> None:
    """A rejected command is not remembered: fixing it and sending it again with the same
    request_id must reach the cloud."""

    async def go() -> None:
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub)
        svc.submit(Command("truck-12", b'{"count": 0, "request_id": "r-fix"}'))
        await settle()
        svc.submit(Command("truck-12", b'{"count": 2, "request_id": "r-fix"}'))
        await settle()
        assert len(cloud.calls) == 1
        assert [s["error"] for s in pub.finals()] == ["invalid_payload", None]

    run(go())


# --- per-device settings ---------------------------------------------------------------------


def test_missing_fields_come_from_the_devices_settings_and_the_request_shows_them() -> None:
    async def scenario() -> None:
        cloud, pub = FakeCloud(), FakePublisher()
        settings = {"truck-12": {"resolution": "1080p", "count": 3, "type": "photo"}}
        svc = service(cloud, pub, defaults_for=lambda device: settings.get(device, {}))
        svc.submit(cmd("truck-12", {"FCount": 1}))
        await settle()
        cloud.calls[0].release()
        await settle()
        assert cloud.calls[0].params["FResolution"] == 3  # the setting
        assert cloud.calls[0].params["FCount"] == 1  # the command's own, in its API spelling
        assert pub.states("truck-12")[-1]["request"] == cloud.calls[0].params
        # A setting the command's type makes invalid is still checked like any command field.
        settings["truck-12"]["count"] = 0
        svc.submit(cmd("truck-12", {}))
        await settle()
        assert pub.states("truck-12")[-1]["error"] == "invalid_payload"

    run(scenario())


def test_an_instruction_leaves_only_after_its_sent_mark_is_committed() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        marks: list[bool] = []

        class Watching(FakeCloud):
            async def capture(self, guid: str, params: dict[str, Any]) -> InstructionReply:
                marks.extend(e.sent for e in journal.unfinished())  # what a crash now would leave
                return await super().capture(guid, params)

        cloud, pub = Watching(auto=True), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        svc.submit(cmd("truck-12"))
        svc.submit(cmd("van-3"))
        await settle()
        assert marks == [True, True, True, True]  # both rows durable and marked, at both calls
        assert len(pub.finals()) == 2

    run(go())


def test_a_capture_interrupted_after_its_mark_is_answered_and_never_sent_again() -> None:
    async def go() -> None:
        journal = Journal(":memory:")
        interrupted = journal.add("truck-12", b'{"request_id": "was-sending", "count": 2}', "rt", b"c")
        behind = journal.add("truck-12", b'{"request_id": "behind"}', None, None)
        journal.sending(interrupted)
        journal.commit()
        cloud, pub = FakeCloud(auto=True), FakePublisher()
        svc = service(cloud, pub, journal=journal)
        svc.replay(journal.unfinished())
        await settle()
        assert [c.params["FCount"] for c in cloud.calls] == [1]  # only the one never sent runs
        first, second = pub.finals()
        assert first["request_id"] == "was-sending"
        assert (first["status"], first["error"], first["code"]) == ("error", "cloud_unreachable", None)
        assert first["message"].endswith("the cloud may have received it")
        assert "stopped" in first["message"]
        assert first["request"]["FCount"] == 2
        assert pub.published[0].response_topic == "rt"
        assert second["request_id"] == "behind"
        assert second["status"] == "ok"
        # A resend of the interrupted request_id gets its answer, not a second capture.
        svc.submit(cmd("truck-12", {"request_id": "was-sending", "count": 2}))
        await settle()
        assert len(cloud.calls) == 1
        assert pub.finals()[-1]["request_id"] == "was-sending"
        assert {e.id for e in journal.unfinished()} == {interrupted, behind}  # until the broker has the states

    run(go())
