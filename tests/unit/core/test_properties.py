"""Property tests: each parser returns a well-formed result or raises its own error, never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.command import (
    FIELDS,
    KNOWN_KEYS,
    MAX_REQUEST_ID,
    CaptureCommand,
    Limits,
    decode_payload,
    parse_command,
)
from bridge.core.errors import CloudError, ErrorCode, InvalidCommand
from bridge.core.reply import DeviceReply, InstructionReply, parse_device_response, parse_instruction_reply

LIMITS = Limits()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Values that are valid for some field, so that accepted commands are common, not rare.
plausible = st.sampled_from(
    [
        0,
        1,
        2,
        3,
        4,
        10,
        100,
        101,
        600,
        601,
        3600,
        3601,
        -1,
        "0",
        "1",
        "main",
        "top",
        "photo",
        "video",
        "photo+video",
        "360p",
        "480p",
        "720p",
        "1080p",
        "r-1",
        True,
        False,
        None,
        1.0,
    ]
)
key_strategy = st.sampled_from(sorted(KNOWN_KEYS)) | st.text(max_size=8)
objects = st.dictionaries(key_strategy, plausible | json_values, max_size=8)


def check_params(command: CaptureCommand, limits: Limits = LIMITS) -> None:
    """The API's own rules, as the cloud API documents them."""
    p = command.api_params()
    assert set(p) == set(FIELDS.values())
    assert p["FCameraID"] in ("0", "1")
    assert type(p["FCameraID"]) is str
    for key in ("FType", "FCount", "FDuration", "FResolution", "FInterval"):
        assert type(p[key]) is int, key
    assert p["FType"] in (1, 2, 3)
    assert p["FResolution"] in (0, 1, 2, 3)
    assert 0 <= p["FInterval"] <= limits.max_interval
    if p["FType"] in (1, 3):
        assert 1 <= p["FCount"] <= limits.max_count
    else:
        assert p["FCount"] == 0
    if p["FType"] in (2, 3):
        assert 1 <= p["FDuration"] <= limits.max_duration
    else:
        assert p["FDuration"] == 0
    rid = command.request_id
    assert rid is None or (isinstance(rid, str) and len(rid) <= MAX_REQUEST_ID)


def parse_or_reject(payload: bytes) -> CaptureCommand | None:
    error: InvalidCommand | None = None
    try:
        command = parse_command(decode_payload(payload), LIMITS)
    except InvalidCommand as exc:
        error = exc
    if error is not None:
        assert error.code is ErrorCode.INVALID_PAYLOAD
        assert error.message  # says why
        return None
    check_params(command)
    return command


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes(payload: bytes) -> None:
    parse_or_reject(payload)


@SETTINGS
@given(objects)
def test_any_object_of_known_keys(data: dict[str, Any]) -> None:
    command = parse_or_reject(json.dumps(data).encode())
    if command is not None:
        # nothing unknown was accepted
        assert set(data) <= KNOWN_KEYS


@SETTINGS
@given(objects)
def test_parse_command_directly(data: dict[str, Any]) -> None:
    try:
        command = parse_command(data, LIMITS)
    except InvalidCommand:
        return
    check_params(command)


@SETTINGS
@given(
    st.dictionaries(st.sampled_from(sorted(FIELDS)), st.integers(min_value=0, max_value=5), max_size=6),
    st.integers(min_value=1, max_value=5),
)
def test_configured_limits_hold(data: dict[str, Any], limit: int) -> None:
    limits = Limits(max_count=limit, max_duration=limit, max_interval=limit)
    try:
        command = parse_command(data, limits)
    except InvalidCommand:
        return
    check_params(command, limits)


@SETTINGS
@given(st.text(max_size=120) | st.lists(st.text(max_size=12), max_size=10).map(lambda f: "(" + ",".join(f) + ")"))
def test_any_device_response(text: str) -> None:
    error: CloudError | None = None
    try:
        reply = parse_device_response(text)
    except CloudError as exc:
        error = exc
    if error is not None:
        assert error.code is ErrorCode.BAD_CLOUD_REPLY
        return
    assert isinstance(reply, DeviceReply)
    assert isinstance(reply.answer, int)
    assert reply.file_id is None or (isinstance(reply.file_id, str) and reply.file_id)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_instruction_reply_bytes(body: bytes) -> None:
    error: CloudError | None = None
    try:
        reply = parse_instruction_reply(body)
    except CloudError as exc:
        error = exc
    if error is not None:
        assert isinstance(error.code, ErrorCode)
        return
    assert isinstance(reply, InstructionReply)


reply_objects = st.fixed_dictionaries(
    {},
    optional={
        "Result": st.sampled_from([200, "200", 102, 104, 138, 999, "x", None, 200.0]) | json_scalars,
        "Message": json_scalars,
        "FObject": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "terminalNum": json_scalars,
                "response": st.text(max_size=60) | json_scalars,
            },
        ),
    },
)


@SETTINGS
@given(reply_objects)
def test_any_instruction_reply_object(data: dict[str, Any]) -> None:
    error: CloudError | None = None
    try:
        reply = parse_instruction_reply(json.dumps(data).encode())
    except CloudError as exc:
        error = exc
    if error is not None:
        assert isinstance(error.code, ErrorCode)
        return
    assert isinstance(reply, InstructionReply)
    assert isinstance(reply.reply, str)
    assert isinstance(reply.device.answer, int)
