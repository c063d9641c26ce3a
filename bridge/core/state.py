"""State payloads (pure): the outcome of one command -> the JSON published on `capture/state`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.core.errors import BridgeError, ErrorCode
from bridge.core.redact import redact
from bridge.core.reply import DEVICE_BUSY, DEVICE_DONE, InstructionReply

PENDING, OK, BUSY, ERROR = "pending", "ok", "busy", "error"


@dataclass(frozen=True, slots=True)
class Context:
    """What a state says about the command it answers."""

    device: str
    asset_guid: str | None = None
    request_id: str | None = None
    request: dict[str, Any] | None = field(default=None)


def utc_timestamp(now: datetime | None = None) -> str:
    """`2026-11-29T19:40:00.123Z`."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _state(
    ctx: Context,
    status: str,
    *,
    code: int | None = None,
    error: ErrorCode | None = None,
    message: str = "",
    terminal_num: str | None = None,
    file_id: str | None = None,
    reply: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    # The cloud's texts may echo what we sent it (the token, the password's MD5): scrub them
    # like every log line, before they reach a retained state.
    return {
        "status": status,
        "code": code,
        "error": error.value if error is not None else None,
        "message": redact.scrub(message),
        "device": ctx.device,
        "asset_guid": ctx.asset_guid,
        "request_id": ctx.request_id,
        "request": ctx.request,
        "terminal_num": redact.scrub(terminal_num) if terminal_num is not None else None,
        "file_id": redact.scrub(file_id) if file_id is not None else None,
        "reply": redact.scrub(reply) if reply is not None else None,
        "timestamp": utc_timestamp(now),
    }


def pending_state(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """The optional first state: accepted, waiting for the cloud."""
    return _state(ctx, PENDING, message="sent to the cloud", now=now)


def reply_state(ctx: Context, reply: InstructionReply, now: datetime | None = None) -> dict[str, Any]:
    """A Result 200 reply -> ok, busy (device answered 1) or error device_error."""
    answer = reply.device.answer
    status, error = OK, None
    message = reply.message
    if answer == DEVICE_BUSY:
        status, error = BUSY, ErrorCode.CAMERA_BUSY
        message = f"camera busy ({reply.message})"
    elif answer != DEVICE_DONE:
        status, error = ERROR, ErrorCode.DEVICE_ERROR
        message = f"device answered {answer} ({reply.message})"
    return _state(
        ctx,
        status,
        code=200,
        error=error,
        message=message,
        terminal_num=reply.terminal_num,
        file_id=reply.device.file_id if answer == DEVICE_DONE else None,
        reply=reply.reply,
        now=now,
    )


def error_state(ctx: Context, exc: BridgeError, now: datetime | None = None) -> dict[str, Any]:
    """Any BridgeError -> an error state (busy for camera_busy, though that comes from reply_state)."""
    status = BUSY if exc.code is ErrorCode.CAMERA_BUSY else ERROR
    return _state(ctx, status, code=exc.result, error=exc.code, message=exc.message, now=now)


def encode(state: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; never fails (a lone surrogate that got this far is written as a \\u escape)."""
    text = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(state, separators=(",", ":")).encode()


# States of commands that named no real device: published not retained, so a mistyped id
# leaves nothing behind on the broker.
_DEVICELESS = (ErrorCode.UNKNOWN_DEVICE.value, ErrorCode.NO_SUCH_DEVICE.value)
# The same test on `encode`'s compact bytes, without parsing every state on the hot path. Inside a
# JSON string every quote is escaped, so these can only match the keys themselves.
_DEVICELESS_MARKS = (b'"asset_guid":null', *(f'"error":"{e}"'.encode() for e in _DEVICELESS))


def retained(state: dict[str, Any] | bytes) -> bool:
    """Whether a state is published retained: only for a command that named a real device."""
    if isinstance(state, bytes):
        return not any(mark in state for mark in _DEVICELESS_MARKS)
    return state.get("asset_guid") is not None and state.get("error") not in _DEVICELESS
