"""State payloads: reply_state, error_state, pending_state, timestamps and encoding."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.core.errors import CloudError, ErrorCode, InvalidCommand, UnknownDevice
from bridge.core.reply import DeviceReply, InstructionReply
from bridge.core.state import Context, encode, error_state, pending_state, reply_state, retained, utc_timestamp

STATE_KEYS = {
    "status",
    "code",
    "error",
    "message",
    "device",
    "asset_guid",
    "request_id",
    "request",
    "terminal_num",
    "file_id",
    "reply",
    "timestamp",
}
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
GUID = "a64b2e58-9305-4a01-9c51-092205123945"
REQUEST = {"FCameraID": "0", "FType": 1, "FCount": 3, "FDuration": 0, "FResolution": 2, "FInterval": 2}
CTX = Context(device="truck-12", asset_guid=GUID, request_id="r-1", request=REQUEST)
NOW = datetime(2026, 11, 29, 19, 40, 0, 123456, tzinfo=UTC)


def instruction(answer: int, file_id: str | None = "700160818000_1769373855") -> InstructionReply:
    text = f"(804250900200,1,001,CAMERA,9,4,{answer},{file_id or ''})"
    return InstructionReply(
        message="ins send ok",
        terminal_num="804250900200",
        reply=text,
        device=DeviceReply(answer=answer, terminal_num="804250900200", file_id=file_id),
    )


def test_reply_state_ok_matches_the_documented_example() -> None:
    state = reply_state(CTX, instruction(0), now=NOW)
    assert state == {
        "status": "ok",
        "code": 200,
        "error": None,
        "message": "ins send ok",
        "device": "truck-12",
        "asset_guid": GUID,
        "request_id": "r-1",
        "request": REQUEST,
        "terminal_num": "804250900200",
        "file_id": "700160818000_1769373855",
        "reply": "(804250900200,1,001,CAMERA,9,4,0,700160818000_1769373855)",
        "timestamp": "2026-11-29T19:40:00.123Z",
    }


def test_reply_state_busy() -> None:
    state = reply_state(CTX, instruction(1, file_id="stale-file"), now=NOW)
    assert state["status"] == "busy"
    assert state["error"] == "camera_busy"
    assert state["code"] == 200
    assert state["file_id"] is None  # no capture was made
    assert "busy" in state["message"]
    assert state["reply"] == "(804250900200,1,001,CAMERA,9,4,1,stale-file)"


@pytest.mark.parametrize("answer", [2, 3, -1, 255])
def test_reply_state_other_device_answer_is_device_error(answer: int) -> None:
    state = reply_state(CTX, instruction(answer), now=NOW)
    assert state["status"] == "error"
    assert state["error"] == "device_error"
    assert state["code"] == 200
    assert state["file_id"] is None
    assert str(answer) in state["message"]


@pytest.mark.parametrize(
    ("exc", "status", "error", "code"),
    [
        (InvalidCommand("count: must be an integer"), "error", "invalid_payload", None),
        (UnknownDevice("device 'x' is not configured"), "error", "unknown_device", None),
        (CloudError(ErrorCode.TOKEN_INVALID, "token", result=104), "error", "token_invalid", 104),
        (CloudError(ErrorCode.DEVICE_OFFLINE, "offline", result=111), "error", "device_offline", 111),
        (CloudError(ErrorCode.DEVICE_TIMEOUT, "timeout", result=138), "error", "device_timeout", 138),
        (CloudError(ErrorCode.CLOUD_UNREACHABLE, "refused"), "error", "cloud_unreachable", None),
        (CloudError(ErrorCode.OVERLOADED, "backlog full"), "error", "overloaded", None),
        (CloudError(ErrorCode.CAMERA_BUSY, "busy", result=200), "busy", "camera_busy", 200),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_error_state(
    exc: InvalidCommand | UnknownDevice | CloudError, status: str, error: str, code: int | None
) -> None:
    state = error_state(CTX, exc, now=NOW)
    assert set(state) == STATE_KEYS
    assert state["status"] == status
    assert state["error"] == error
    assert state["code"] == code
    assert state["message"] == exc.message
    assert state["file_id"] is None
    assert state["terminal_num"] is None
    assert state["reply"] is None
    assert state["device"] == "truck-12"
    assert state["request_id"] == "r-1"


def test_error_state_without_context_details() -> None:
    state = error_state(Context(device="x"), InvalidCommand("payload: not valid JSON"), now=NOW)
    assert state["asset_guid"] is None
    assert state["request_id"] is None
    assert state["request"] is None
    assert state["code"] is None


def test_pending_state() -> None:
    state = pending_state(CTX, now=NOW)
    assert set(state) == STATE_KEYS
    assert state["status"] == "pending"
    assert state["error"] is None
    assert state["code"] is None
    assert state["request"] == REQUEST


def test_every_state_has_the_twelve_documented_keys() -> None:
    states: list[dict[str, Any]] = [
        reply_state(CTX, instruction(0)),
        reply_state(CTX, instruction(1)),
        reply_state(CTX, instruction(2)),
        error_state(CTX, InvalidCommand("x: y")),
        pending_state(CTX),
    ]
    for state in states:
        assert set(state) == STATE_KEYS
        assert len(state) == 12
        assert state["status"] in ("pending", "ok", "busy", "error")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 29, 19, 40, 0, 123456, tzinfo=UTC), "2026-11-29T19:40:00.123Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 0, tzinfo=UTC), "2026-01-02T03:04:05.000Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC), "2026-01-02T03:04:05.999Z"),
        (datetime(2026, 1, 2, 3, 4, 5, 7000, tzinfo=UTC), "2026-01-02T03:04:05.007Z"),
    ],
)
def test_utc_timestamp_format(now: datetime, expected: str) -> None:
    assert utc_timestamp(now) == expected


def test_utc_timestamp_now_is_utc() -> None:
    stamp = utc_timestamp()
    assert TIMESTAMP_RE.match(stamp), stamp
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1)


def test_state_timestamp_format() -> None:
    assert TIMESTAMP_RE.match(reply_state(CTX, instruction(0))["timestamp"])
    assert TIMESTAMP_RE.match(error_state(CTX, InvalidCommand("a: b"))["timestamp"])


def test_encode_round_trip() -> None:
    state = reply_state(Context("kamera-ü", GUID, "rid-✓", REQUEST), instruction(0), now=NOW)
    raw = encode(state)
    assert isinstance(raw, bytes)
    assert json.loads(raw) == state
    assert b" " not in raw.replace(b"ins send ok", b"")  # compact separators
    assert "kamera-ü".encode() in raw  # UTF-8, not \\u escapes


@pytest.mark.parametrize(
    ("ctx", "error", "expected"),
    [
        (Context("truck-12", "a64b2e58-9305-4a01-9c51-092205123945"), None, True),
        (Context("truck-12", "a64b2e58-9305-4a01-9c51-092205123945"), InvalidCommand("bad"), True),
        (Context("truck-1Z"), UnknownDevice("not configured"), False),
        (Context("truck-1Z"), InvalidCommand("bad"), False),  # never named a real device either
        (Context("a64b2e58-9305-4a01-9c51-092205123945", "a64b2e58-9305-4a01-9c51-092205123945"),
         CloudError(ErrorCode.NO_SUCH_DEVICE, "no such device", result=106), False),
        # Text that looks like the markers inside a message does not count: quotes are escaped there.
        (Context("truck-12", "a64b2e58-9305-4a01-9c51-092205123945"),
         InvalidCommand('"asset_guid":null "error":"unknown_device"'), True),
    ],
)
def test_retained_only_for_a_real_device_as_dict_and_as_bytes(
    ctx: Context, error: Exception | None, expected: bool
) -> None:
    state = error_state(ctx, error) if isinstance(error, CloudError | InvalidCommand | UnknownDevice) \
        else pending_state(ctx)
    assert retained(state) is expected
    assert retained(encode(state)) is expected


def test_state_encoding_never_fails() -> None:
    ctx = Context("d", request_id="\ud800")
    payload = encode(error_state(ctx, InvalidCommand("x")))
    assert json.loads(payload)["request_id"] == "\ud800"  # escaped, still one JSON document
