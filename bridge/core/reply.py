"""The cloud API's request bodies and reply parsing (pure): bytes in, values or a CloudError out.

Every shape a reply can take (`Result`, `FObject`, `response`) ends in a value or a
`bad_cloud_reply` error, never in another exception.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from bridge.core.errors import RESULT_ERRORS, CloudError, ErrorCode

ACTION = "ActiveNewPhotograph"
LOGIN_PATH = "/login"
INSTRUCTION_PATH = "/Instruction"
RESULT_OK = 200
RESULT_TOKEN = 104
RESULT_DEVICE_TIMEOUT = 138
# The two answers that mean "not processed, try later": the request did not act on anything.
RETRY_LATER_STATUSES = frozenset({429, 503})
OUTCOME_UNKNOWN = "the cloud may have received it"
DEVICE_DONE, DEVICE_BUSY = 0, 1
# An integer as the cloud writes one: ASCII digits only (str.isdigit also admits "²", which int() refuses).
_INT_RE = re.compile(r"-?[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class DeviceReply:
    """The device's answer, parsed from the `response` string."""

    answer: int
    terminal_num: str | None
    file_id: str | None


@dataclass(frozen=True, slots=True)
class InstructionReply:
    """A Result 200 answer to ActiveNewPhotograph."""

    message: str
    terminal_num: str | None
    reply: str
    device: DeviceReply
    tries: int = 1


# --- pure conversions -------------------------------------------------------


def md5_hex(password: str) -> str:
    """The vendor wants the password as the hex MD5 of its UTF-8 bytes."""
    return hashlib.md5(password.encode("utf-8"), usedforsecurity=False).hexdigest()


def login_body(username: str, password: str) -> bytes:
    """Body of POST /login."""
    return json.dumps({"FUserName": username, "FPassword": md5_hex(password)}).encode()


def instruction_body(
    token: str, guid: str, params: dict[str, Any], time_difference: int = 28800, language: str = "1"
) -> bytes:
    """Body of POST /Instruction for ActiveNewPhotograph."""
    return json.dumps(
        {
            "FTokenID": token,
            "FAction": ACTION,
            "FAssetGUID": guid,
            "FT_GpActiveNewPhotograph": params,
            "FTimeDifferent": time_difference,
            "FLanguage": language,
        },
        separators=(",", ":"),
    ).encode()


def _decode_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, "cloud reply is not JSON") from None
    if not isinstance(data, dict):
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, "cloud reply is not a JSON object")
    return data


def _result_of(data: dict[str, Any]) -> int:
    result = data.get("Result")
    if isinstance(result, str) and _INT_RE.fullmatch(result.strip()):
        result = int(result.strip())
    if not isinstance(result, int) or isinstance(result, bool):
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, "cloud reply has no Result code")
    return result


def _message_of(data: dict[str, Any]) -> str:
    message = data.get("Message")
    return message if isinstance(message, str) else ""


def parse_login_reply(body: bytes) -> str:
    """Login reply -> token; CloudError(login_failed) on a refusal, bad_cloud_reply when unreadable."""
    data = _decode_json_object(body)
    result = _result_of(data)
    if result != RESULT_OK:
        reason = {103: "wrong user name or password", 106: "account expired", 102: "bad login parameters"}
        text = reason.get(result) or _message_of(data) or "refused"
        raise CloudError(ErrorCode.LOGIN_FAILED, f"login refused: {text} (Result {result})", result=result)
    objects = data.get("FObject")
    first = objects[0] if isinstance(objects, list) and objects else objects
    token = first.get("FTokenID") if isinstance(first, dict) else None
    if not isinstance(token, str) or not token:
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, "login reply has no FTokenID", result=result)
    return token


def parse_device_response(response: str) -> DeviceReply:
    """`(804250900200,1,001,CAMERA,9,4,0,700160818000_1769373855)` -> DeviceReply.

    Spaces and extra trailing fields are tolerated; fewer than 7 fields or a
    non-numeric 7th field is not understood and raises bad_cloud_reply.
    """
    text = response.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    fields = [f.strip() for f in text.split(",")]
    if len(fields) < 7:
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, f"device response has {len(fields)} fields, expected 8")
    answer_text = fields[6]
    if not _INT_RE.fullmatch(answer_text):
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, "device response: 7th field is not a number")
    file_id = fields[7] if len(fields) > 7 and fields[7] else None
    return DeviceReply(answer=int(answer_text), terminal_num=fields[0] or None, file_id=file_id)


def parse_instruction_reply(body: bytes) -> InstructionReply:
    """Instruction reply -> InstructionReply for Result 200, else the mapped CloudError."""
    data = _decode_json_object(body)
    result = _result_of(data)
    message = _message_of(data)
    if result != RESULT_OK:
        code = RESULT_ERRORS.get(result, ErrorCode.CLOUD_ERROR)
        raise CloudError(code, f"{message or 'cloud error'} (Result {result})", result=result)
    obj = data.get("FObject")
    response = obj.get("response") if isinstance(obj, dict) else None
    if not isinstance(response, str):
        raise CloudError(ErrorCode.BAD_CLOUD_REPLY, "Result 200 without FObject.response", result=result)
    try:
        device = parse_device_response(response)
    except CloudError as exc:
        exc.result = result
        raise
    terminal = obj.get("terminalNum") if isinstance(obj, dict) else None
    return InstructionReply(
        message=message,
        terminal_num=str(terminal) if isinstance(terminal, (str, int)) else device.terminal_num,
        reply=response,
        device=device,
    )
