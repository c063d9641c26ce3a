"""Capture commands: decode_payload + parse_command against the cloud API's documented command table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from bridge.core.command import (
    API_TO_FRIENDLY,
    MAX_REQUEST_ID,
    CaptureCommand,
    Limits,
    decode_payload,
    parse_command,
    request_id_of,
)
from bridge.core.errors import ErrorCode, InvalidCommand

DEFAULTS: dict[str, Any] = {
    "FCameraID": "0",
    "FType": 1,
    "FCount": 1,
    "FDuration": 0,
    "FResolution": 2,
    "FInterval": 0,
}

# The request body's FT_GpActiveNewPhotograph object as the cloud API documents it, verbatim.
DOC_EXAMPLE = b'{"FCameraID": "0", "FType": 1, "FCount": 3, "FDuration": 0, "FResolution": 2, "FInterval": 2}'


def params(**changes: Any) -> dict[str, Any]:
    """The defaults with some fields changed."""
    return {**DEFAULTS, **changes}


DEFAULT_LIMITS = Limits()


def parse(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> CaptureCommand:
    return parse_command(decode_payload(payload), limits)


VALID: list[tuple[str, bytes, dict[str, Any]]] = [
    ("empty-defaults", b"{}", DEFAULTS),
    ("documented-example", DOC_EXAMPLE, params(FCount=3, FInterval=2)),
    # camera
    ("camera-int-0", b'{"camera": 0}', params()),
    ("camera-int-1", b'{"camera": 1}', params(FCameraID="1")),
    ("camera-str-0", b'{"camera": "0"}', params()),
    ("camera-str-1", b'{"camera": "1"}', params(FCameraID="1")),
    ("camera-main", b'{"camera": "main"}', params()),
    ("camera-top", b'{"camera": "top"}', params(FCameraID="1")),
    ("FCameraID-top", b'{"FCameraID": "top"}', params(FCameraID="1")),
    ("FCameraID-int", b'{"FCameraID": 1}', params(FCameraID="1")),
    # type
    ("type-photo", b'{"type": "photo"}', params()),
    ("type-1", b'{"type": 1}', params()),
    ("type-video-default-duration", b'{"type": "video"}', params(FType=2, FCount=0, FDuration=10)),
    ("FType-2", b'{"FType": 2}', params(FType=2, FCount=0, FDuration=10)),
    ("type-photo+video", b'{"type": "photo+video"}', params(FType=3, FCount=1, FDuration=10)),
    ("FType-3-count-duration", b'{"FType": 3, "FCount": 4, "FDuration": 30}', params(FType=3, FCount=4, FDuration=30)),
    # count / duration that do not apply are sent as 0
    ("photo-ignores-duration", b'{"type": "photo", "duration": 30}', params()),
    ("photo-duration-0", b'{"type": "photo", "duration": 0}', params()),
    ("video-ignores-count", b'{"type": "video", "count": 5}', params(FType=2, FCount=0, FDuration=10)),
    ("video-count-0", b'{"type": "video", "count": 0}', params(FType=2, FCount=0, FDuration=10)),
    ("video-duration", b'{"type": "video", "duration": 25}', params(FType=2, FCount=0, FDuration=25)),
    # resolution
    ("resolution-0", b'{"resolution": 0}', params(FResolution=0)),
    ("resolution-3", b'{"resolution": 3}', params(FResolution=3)),
    ("resolution-360p", b'{"resolution": "360p"}', params(FResolution=0)),
    ("resolution-480p", b'{"resolution": "480p"}', params(FResolution=1)),
    ("resolution-720p", b'{"resolution": "720p"}', params(FResolution=2)),
    ("FResolution-1080p", b'{"FResolution": "1080p"}', params(FResolution=3)),
    # count / interval limits (defaults 100 / 3600)
    ("count-1", b'{"count": 1}', params()),
    ("count-max", b'{"count": 100}', params(FCount=100)),
    ("interval-0", b'{"interval": 0}', params()),
    ("interval-max", b'{"FInterval": 3600}', params(FInterval=3600)),
    ("duration-max", b'{"type": 2, "duration": 600}', params(FType=2, FCount=0, FDuration=600)),
    # mixed spellings
    (
        "mixed-names",
        b'{"camera": "top", "FType": "photo+video", "count": 2, "FDuration": 5, "resolution": "1080p", "FInterval": 3}',
        {"FCameraID": "1", "FType": 3, "FCount": 2, "FDuration": 5, "FResolution": 3, "FInterval": 3},
    ),
    (
        "all-friendly",
        b'{"camera": 0, "type": "photo", "count": 3, "duration": 7, "resolution": "480p", "interval": 2}',
        params(FCount=3, FResolution=1, FInterval=2),
    ),
    # the same field twice with the same value
    ("same-friendly-and-api", b'{"count": 3, "FCount": 3}', params(FCount=3)),
    ("same-meaning-camera", b'{"camera": "main", "FCameraID": 0}', params()),
    ("same-meaning-type", b'{"type": "video", "FType": 2}', params(FType=2, FCount=0, FDuration=10)),
    ("same-meaning-resolution", b'{"resolution": "360p", "FResolution": 0}', params(FResolution=0)),
    ("duplicated-json-key-same-value", b'{"count": 2, "count": 2}', params(FCount=2)),
    # request_id does not change the parameters
    ("request-id", b'{"request_id": "r-1"}', params()),
    ("request-id-null", b'{"request_id": null}', params()),
    ("request-id-max-length", json.dumps({"request_id": "x" * MAX_REQUEST_ID}).encode(), params()),
    ("utf8-bom-free-whitespace", b'  {"count": 2}\n', params(FCount=2)),
]


@pytest.mark.parametrize(("payload", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_payloads(payload: bytes, expected: dict[str, Any]) -> None:
    command = parse(payload)
    assert isinstance(command, CaptureCommand)
    got = command.api_params()
    assert got == expected
    # exact types, not just equal values: FCameraID is text, the rest integers (never bool)
    assert type(got["FCameraID"]) is str
    for key in ("FType", "FCount", "FDuration", "FResolution", "FInterval"):
        assert type(got[key]) is int, key


def test_documented_example_round_trips_unchanged() -> None:
    assert parse(DOC_EXAMPLE).api_params() == json.loads(DOC_EXAMPLE)


def test_request_id_is_kept() -> None:
    assert parse(b'{"request_id": "abc-1"}').request_id == "abc-1"
    assert parse(b"{}").request_id is None


def test_configured_limits_allow_larger_values() -> None:
    limits = Limits(max_count=500, max_duration=1200, max_interval=7200)
    command = parse(b'{"type": 3, "count": 500, "duration": 1200, "interval": 7200}', limits)
    assert command.api_params() == params(FType=3, FCount=500, FDuration=1200, FInterval=7200)


def test_default_duration_respects_a_lower_configured_limit() -> None:
    # A default may not exceed the configured upper limit any more than a sent value may.
    command = parse(b'{"type": "video"}', Limits(max_duration=5))
    assert command.api_params() == params(FType=2, FCount=0, FDuration=5)
    assert parse(b'{"type": "video"}', Limits(max_duration=10)).api_params()["FDuration"] == 10
    assert parse(b'{"type": "video"}', Limits(max_duration=11)).api_params()["FDuration"] == 10


# (id, payload, limits, accepted prefixes of the message)
INVALID: list[tuple[str, bytes, Limits, tuple[str, ...]]] = [
    ("unknown-key", b'{"colour": "red"}', Limits(), ("colour",)),
    ("unknown-key-with-valid", b'{"count": 1, "zoom": 2}', Limits(), ("zoom",)),
    ("unknown-key-case", b'{"Count": 1}', Limits(), ("Count",)),
    ("unknown-api-like", b'{"FTokenID": "x"}', Limits(), ("FTokenID",)),
    # camera
    ("camera-2", b'{"camera": 2}', Limits(), ("camera",)),
    ("camera-bool", b'{"camera": true}', Limits(), ("camera",)),
    ("camera-float", b'{"camera": 0.0}', Limits(), ("camera",)),
    ("camera-null", b'{"camera": null}', Limits(), ("camera",)),
    ("camera-name", b'{"camera": "rear"}', Limits(), ("camera",)),
    ("FCameraID-2", b'{"FCameraID": "2"}', Limits(), ("FCameraID", "camera")),
    # type
    ("type-0", b'{"type": 0}', Limits(), ("type",)),
    ("type-4", b'{"type": 4}', Limits(), ("type",)),
    ("type-bool", b'{"type": true}', Limits(), ("type",)),
    ("type-float", b'{"type": 1.0}', Limits(), ("type",)),
    ("type-null", b'{"type": null}', Limits(), ("type",)),
    ("type-string-digits", b'{"type": "1"}', Limits(), ("type",)),
    ("type-name-case", b'{"type": "Photo"}', Limits(), ("type",)),
    ("type-list", b'{"type": [1]}', Limits(), ("type",)),
    ("type-object", b'{"type": {"a": 1}}', Limits(), ("type",)),
    ("FType-string-digits", b'{"FType": "2"}', Limits(), ("FType", "type")),
    # count
    ("count-0-photo", b'{"count": 0}', Limits(), ("count",)),
    ("count-0-photo+video", b'{"type": 3, "count": 0}', Limits(), ("count",)),
    ("count-negative", b'{"count": -1}', Limits(), ("count",)),
    ("count-over-default-limit", b'{"count": 101}', Limits(), ("count",)),
    ("count-over-configured-limit", b'{"count": 6}', Limits(max_count=5), ("count",)),
    ("count-bool", b'{"count": true}', Limits(), ("count",)),
    ("count-float", b'{"count": 2.0}', Limits(), ("count",)),
    ("count-null", b'{"count": null}', Limits(), ("count",)),
    ("count-string", b'{"count": "2"}', Limits(), ("count",)),
    ("count-huge", b'{"count": 100000000000000000000000}', Limits(), ("count",)),
    ("FCount-float", b'{"FCount": 1.5}', Limits(), ("FCount", "count")),
    ("count-over-limit-even-for-video", b'{"type": 2, "count": 101}', Limits(), ("count",)),
    # duration
    ("duration-0-video", b'{"type": "video", "duration": 0}', Limits(), ("duration",)),
    ("duration-0-photo+video", b'{"type": 3, "FDuration": 0}', Limits(), ("duration", "FDuration")),
    ("duration-negative", b'{"duration": -5}', Limits(), ("duration",)),
    ("duration-over-default-limit", b'{"type": 2, "duration": 601}', Limits(), ("duration",)),
    ("duration-over-configured-limit", b'{"type": 2, "duration": 31}', Limits(max_duration=30), ("duration",)),
    ("duration-string", b'{"duration": "10"}', Limits(), ("duration",)),
    ("duration-bool", b'{"duration": false}', Limits(), ("duration",)),
    # resolution
    ("resolution-4", b'{"resolution": 4}', Limits(), ("resolution",)),
    ("resolution-negative", b'{"resolution": -1}', Limits(), ("resolution",)),
    ("resolution-name", b'{"resolution": "4k"}', Limits(), ("resolution",)),
    ("resolution-bool", b'{"resolution": false}', Limits(), ("resolution",)),
    ("FResolution-string-digits", b'{"FResolution": "2"}', Limits(), ("FResolution", "resolution")),
    # interval
    ("interval-negative", b'{"interval": -1}', Limits(), ("interval",)),
    ("interval-over-default-limit", b'{"interval": 3601}', Limits(), ("interval",)),
    ("interval-over-configured-limit", b'{"interval": 11}', Limits(max_interval=10), ("interval",)),
    ("interval-float", b'{"interval": 0.5}', Limits(), ("interval",)),
    # the same field twice with two values
    ("friendly-and-api-differ", b'{"count": 2, "FCount": 3}', Limits(), ("count", "FCount")),
    ("friendly-and-api-type-differ", b'{"type": "photo", "FType": 2}', Limits(), ("type", "FType")),
    ("friendly-and-api-camera-differ", b'{"camera": "top", "FCameraID": "0"}', Limits(), ("camera", "FCameraID")),
    ("friendly-and-api-int-vs-bool", b'{"count": 1, "FCount": true}', Limits(), ("count", "FCount")),
    ("friendly-and-api-int-vs-float", b'{"count": 1, "FCount": 1.0}', Limits(), ("count", "FCount")),
    ("friendly-and-api-bad-api-value", b'{"type": 1, "FType": 9}', Limits(), ("FType",)),
    ("duplicated-json-key", b'{"count": 2, "count": 3}', Limits(), ("count",)),
    ("duplicated-json-key-api", b'{"FType": 1, "FType": 2}', Limits(), ("FType",)),
    ("duplicated-json-key-bool-then-int", b'{"count": true, "count": 1}', Limits(), ("count",)),
    ("duplicated-json-key-float-then-int", b'{"count": 1.0, "count": 1}', Limits(), ("count",)),
    ("duplicated-request-id", b'{"request_id": "a", "request_id": "b"}', Limits(), ("request_id",)),
    # request_id
    ("request-id-too-long", json.dumps({"request_id": "x" * (MAX_REQUEST_ID + 1)}).encode(), Limits(), ("request_id",)),
    ("request-id-int", b'{"request_id": 5}', Limits(), ("request_id",)),
    ("request-id-list", b'{"request_id": ["a"]}', Limits(), ("request_id",)),
    ("request-id-bool", b'{"request_id": true}', Limits(), ("request_id",)),
    # not a JSON object at all
    ("empty", b"", Limits(), ("payload",)),
    ("not-json", b"take a photo", Limits(), ("payload",)),
    ("truncated-json", b'{"count": 1', Limits(), ("payload",)),
    ("trailing-garbage", b'{"count": 1} x', Limits(), ("payload",)),
    ("json-array", b"[1, 2]", Limits(), ("payload",)),
    ("json-string", b'"photo"', Limits(), ("payload",)),
    ("json-number", b"1", Limits(), ("payload",)),
    ("json-null", b"null", Limits(), ("payload",)),
    ("invalid-utf8", b'{"request_id": "\xff\xfe"}', Limits(), ("payload",)),
    ("lone-continuation-byte", b"\x80", Limits(), ("payload",)),
    ("deeply-nested-arrays", b"[" * 100_000, Limits(), ("payload",)),
    ("deeply-nested-closed", b"[" * 100_000 + b"]" * 100_000, Limits(), ("payload",)),
    ("deeply-nested-objects", b'{"a":' * 100_000, Limits(), ("payload",)),
    ("deeply-nested-value", b'{"count": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", Limits(), ("payload", "count")),
    ("huge-int-literal", b'{"count": ' + b"9" * 5000 + b"}", Limits(), ("payload", "count")),
]


@pytest.mark.parametrize(("payload", "limits", "prefixes"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_payloads(payload: bytes, limits: Limits, prefixes: tuple[str, ...]) -> None:
    with pytest.raises(InvalidCommand) as info:
        parse(payload, limits)
    exc = info.value
    assert exc.code is ErrorCode.INVALID_PAYLOAD
    assert exc.result is None
    assert exc.message == str(exc)
    assert any(exc.message.startswith(p + ":") for p in prefixes), exc.message


def test_too_large_payload_is_rejected_before_parsing() -> None:
    payload = json.dumps({"request_id": "x" * 100}).encode()
    with pytest.raises(InvalidCommand, match=r"^payload: larger than 64 bytes"):
        decode_payload(payload, max_bytes=64)
    assert decode_payload(payload, max_bytes=len(payload)) == {"request_id": "x" * 100}


def test_default_size_limit() -> None:
    big = b'{"request_id": "' + b"x" * 70_000 + b'"}'
    with pytest.raises(InvalidCommand, match=r"^payload: larger than 65536 bytes"):
        decode_payload(big)


def test_parse_command_rejects_non_object() -> None:
    with pytest.raises(InvalidCommand, match=r"^payload:"):
        parse_command([1, 2])  # type: ignore[arg-type]


def test_api_name_error_names_the_field_that_was_sent() -> None:
    # Both spellings given with an invalid API value: the API spelling is named.
    with pytest.raises(InvalidCommand, match=r"^FCameraID:"):
        parse(b'{"camera": 0, "FCameraID": "rear"}')


API_ALONE: dict[str, tuple[object, dict[str, Any]]] = {
    "FCameraID": ("1", params(FCameraID="1")),
    "FType": (3, params(FType=3, FDuration=10)),
    "FCount": (2, params(FCount=2)),
    "FDuration": (4, params()),  # a photo ignores the duration: sent as 0
    "FResolution": (1, params(FResolution=1)),
    "FInterval": (5, params(FInterval=5)),
}


@pytest.mark.parametrize("api", sorted(API_TO_FRIENDLY))
def test_every_api_name_is_accepted_alone(api: str) -> None:
    value, expected = API_ALONE[api]
    assert parse(json.dumps({api: value}).encode()).api_params() == expected
    # and the friendly spelling means the same
    assert parse(json.dumps({API_TO_FRIENDLY[api]: value}).encode()).api_params() == expected


def test_command_is_immutable() -> None:
    command = parse(b'{"count": 2}')
    with pytest.raises(ValidationError, match="frozen"):
        command.count = 3
    assert command.count == 2


# --- request_id_of ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"request_id": "r-1"}', "r-1"),
        (b'{"request_id": "r-1", "type": "nonsense"}', "r-1"),
        (b'{"request_id": "r-2", "colour": 1}', "r-2"),
        (b'{"request_id": 5}', None),
        (b'{"request_id": null}', None),
        (json.dumps({"request_id": "x" * (MAX_REQUEST_ID + 1)}).encode(), None),
        (json.dumps({"request_id": "x" * MAX_REQUEST_ID}).encode(), "x" * MAX_REQUEST_ID),
        (b"{}", None),
        (b"[]", None),
        (b'["request_id"]', None),
        (b"not json", None),
        (b"", None),
        (b"\xff\xfe\x00", None),
        (b"[" * 100_000, None),
    ],
    ids=[
        "plain",
        "invalid-type",
        "unknown-key",
        "int",
        "null",
        "too-long",
        "max-length",
        "absent",
        "array",
        "array-of-key",
        "not-json",
        "empty",
        "bad-bytes",
        "deeply-nested",
    ],
)
def test_request_id_of(payload: bytes, expected: str | None) -> None:
    assert request_id_of(payload) == expected


# --- surrogate escapes -----------------------------------------------------------------------


def test_a_paired_surrogate_escape_is_a_normal_character() -> None:
    assert decode_payload(b'{"request_id": "\\ud83d\\ude00"}') == {"request_id": "\U0001f600"}
