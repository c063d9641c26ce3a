"""The pure half of the cloud client: request bodies and reply parsing, against the cloud API's documented examples."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.errors import CloudError, ErrorCode
from bridge.core.reply import (
    ACTION,
    DeviceReply,
    InstructionReply,
    instruction_body,
    login_body,
    md5_hex,
    parse_device_response,
    parse_instruction_reply,
    parse_login_reply,
)

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
DOC_RESPONSE = "(804250900200,1,001,CAMERA,9,4,0,700160818000_1769373855)"
DOC_PARAMS: dict[str, Any] = {
    "FCameraID": "0",
    "FType": 1,
    "FCount": 3,
    "FDuration": 0,
    "FResolution": 2,
    "FInterval": 2,
}
DOC_OK_REPLY: dict[str, Any] = {
    "Result": 200,
    "Message": "ins send ok",
    "FObject": {
        "terminalStrId": "c5b53001-8755-4269-a9c8-b71ca04c6a0d",
        "terminalNum": "804250900200",
        "dateTime": "2025-12-20T06:58:41.04655Z",
        "dateTimestamp": 1766213921046,
        "response": DOC_RESPONSE,
    },
}


def body(data: object) -> bytes:
    return json.dumps(data).encode()


# --- md5_hex / login_body ----------------------------------------------------------------


def test_md5_hex_known_values() -> None:
    assert md5_hex("") == "d41d8cd98f00b204e9800998ecf8427e"
    assert md5_hex("password") == "5f4dcc3b5aa765d61d8327deb882cf99"
    # UTF-8 bytes, lowercase hex
    assert md5_hex("pässwörd") == hashlib.md5("pässwörd".encode()).hexdigest()
    assert md5_hex("x") == md5_hex("x").lower()
    assert len(md5_hex("anything")) == 32


def test_login_body_sends_md5_never_the_password() -> None:
    raw = login_body("demo", "s3cret-Passw0rd")
    assert json.loads(raw) == {"FUserName": "demo", "FPassword": md5_hex("s3cret-Passw0rd")}
    assert b"s3cret-Passw0rd" not in raw


def test_login_body_non_ascii() -> None:
    data = json.loads(login_body("usér", "密码"))
    assert data == {"FUserName": "usér", "FPassword": md5_hex("密码")}


# --- instruction_body ----------------------------------------------------------------------


def test_instruction_body_has_the_documented_shape() -> None:
    data = json.loads(instruction_body("TOKEN-1", GUID, DOC_PARAMS))
    assert data == {
        "FTokenID": "TOKEN-1",
        "FAction": "ActiveNewPhotograph",
        "FAssetGUID": GUID,
        "FT_GpActiveNewPhotograph": DOC_PARAMS,
        "FTimeDifferent": 28800,
        "FLanguage": "1",
    }
    assert ACTION == "ActiveNewPhotograph"
    assert list(data) == [
        "FTokenID",
        "FAction",
        "FAssetGUID",
        "FT_GpActiveNewPhotograph",
        "FTimeDifferent",
        "FLanguage",
    ]


def test_instruction_body_time_difference_and_language() -> None:
    data = json.loads(instruction_body("t", GUID, DOC_PARAMS, time_difference=-3600, language="2"))
    assert data["FTimeDifferent"] == -3600
    assert data["FLanguage"] == "2"
    assert type(data["FT_GpActiveNewPhotograph"]["FCameraID"]) is str


# --- parse_login_reply ---------------------------------------------------------------------


def test_login_reply_ok() -> None:
    reply = {
        "Result": 200,
        "Message": "success",
        "FObject": [
            {"FUserName": "demo", "FUserGUID": "g", "FTokenID": "tok-123", "FExpireTime": "2020-07-30T08:00:00"}
        ],
    }
    assert parse_login_reply(body(reply)) == "tok-123"


def test_login_reply_ok_with_object_instead_of_list() -> None:
    assert parse_login_reply(body({"Result": 200, "FObject": {"FTokenID": "tok-9"}})) == "tok-9"


@pytest.mark.parametrize("result", [103, 106, 102, 500])
def test_login_refused(result: int) -> None:
    with pytest.raises(CloudError) as info:
        parse_login_reply(body({"Result": result, "Message": "nope", "FObject": []}))
    assert info.value.code is ErrorCode.LOGIN_FAILED
    assert info.value.result == result
    assert f"Result {result}" in info.value.message


def test_login_refused_reasons_are_readable() -> None:
    with pytest.raises(CloudError, match="wrong user name or password"):
        parse_login_reply(body({"Result": 103, "FObject": []}))
    with pytest.raises(CloudError, match="account expired"):
        parse_login_reply(body({"Result": 106, "FObject": []}))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b"[]",
        b'"ok"',
        b"{}",
        b'{"Result": "abc"}',
        b'{"Result": true, "FObject": [{"FTokenID": "t"}]}',
        b'{"Result": 200}',
        b'{"Result": 200, "FObject": []}',
        b'{"Result": 200, "FObject": [{}]}',
        b'{"Result": 200, "FObject": [{"FTokenID": ""}]}',
        b'{"Result": 200, "FObject": [{"FTokenID": 12345}]}',
        b'{"Result": 200, "FObject": ["tok"]}',
        b"\xff\xfe",
    ],
    ids=[
        "empty",
        "html",
        "array",
        "string",
        "no-result",
        "result-text",
        "result-bool",
        "no-fobject",
        "empty-fobject",
        "no-token",
        "empty-token",
        "numeric-token",
        "fobject-of-strings",
        "bad-bytes",
    ],
)
def test_login_reply_malformed(raw: bytes) -> None:
    with pytest.raises(CloudError) as info:
        parse_login_reply(raw)
    assert info.value.code is ErrorCode.BAD_CLOUD_REPLY


# --- parse_device_response -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DOC_RESPONSE, DeviceReply(0, "804250900200", "700160818000_1769373855")),
        (
            "( 804250900200 , 1 , 001 , CAMERA , 9 , 4 , 0 , 700160818000_1769373855 )",
            DeviceReply(0, "804250900200", "700160818000_1769373855"),
        ),
        ("  " + DOC_RESPONSE + "\n", DeviceReply(0, "804250900200", "700160818000_1769373855")),
        ("(804250900200,1,001,CAMERA,9,4,0,f1,extra,more)", DeviceReply(0, "804250900200", "f1")),
        ("(804250900200,1,001,CAMERA,9,4,1,)", DeviceReply(1, "804250900200", None)),
        ("(804250900200,1,001,CAMERA,9,4,1)", DeviceReply(1, "804250900200", None)),
        ("(804250900200,1,001,CAMERA,9,4,7,x)", DeviceReply(7, "804250900200", "x")),
        ("(804250900200,1,001,CAMERA,9,4,-1,x)", DeviceReply(-1, "804250900200", "x")),
        ("804250900200,1,001,CAMERA,9,4,0,f2", DeviceReply(0, "804250900200", "f2")),
        ("(,1,001,CAMERA,9,4,0,f3)", DeviceReply(0, None, "f3")),
    ],
    ids=[
        "documented",
        "spaces",
        "outer-whitespace",
        "extra-fields",
        "empty-file-id",
        "missing-file-id",
        "other-answer",
        "negative-answer",
        "no-parentheses",
        "empty-terminal",
    ],
)
def test_device_response(text: str, expected: DeviceReply) -> None:
    assert parse_device_response(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "()",
        "(804250900200,1,001,CAMERA,9,4)",
        "(a,b,c,d,e,f,ok,x)",
        "(a,b,c,d,e,f,,x)",
        "(a,b,c,d,e,f,1.0,x)",
        "(a,b,c,d,e,f,--1,x)",
        "(a,b,c,d,e,f,-,x)",
        "(a,b,c,d,e,f,\u00b2,x)",
        "(a,b,c,d,e,f,1 2,x)",
        "(a,b,c,d,e,f," + "9" * 5000 + ",x)",
    ],
    ids=[
        "empty",
        "empty-parens",
        "six-fields",
        "word-answer",
        "empty-answer",
        "float-answer",
        "double-minus",
        "lone-minus",
        "superscript-digit",
        "inner-space",
        "huge-number",
    ],
)
def test_device_response_not_understood(text: str) -> None:
    with pytest.raises(CloudError) as info:
        parse_device_response(text)
    assert info.value.code is ErrorCode.BAD_CLOUD_REPLY


# --- parse_instruction_reply ---------------------------------------------------------------


def test_instruction_reply_documented_sample() -> None:
    reply = parse_instruction_reply(body(DOC_OK_REPLY))
    assert reply == InstructionReply(
        message="ins send ok",
        terminal_num="804250900200",
        reply=DOC_RESPONSE,
        device=DeviceReply(0, "804250900200", "700160818000_1769373855"),
    )
    assert reply.tries == 1


def test_instruction_reply_result_as_text() -> None:
    reply = parse_instruction_reply(body({**DOC_OK_REPLY, "Result": "200"}))
    assert reply.device.file_id == "700160818000_1769373855"


def test_instruction_reply_busy_device_is_still_a_reply() -> None:
    data = {**DOC_OK_REPLY, "FObject": {**DOC_OK_REPLY["FObject"], "response": "(8042,1,001,CAMERA,9,4,1,)"}}
    reply = parse_instruction_reply(body(data))
    assert reply.device.answer == 1
    assert reply.device.file_id is None


def test_instruction_reply_terminal_falls_back_to_response() -> None:
    obj = {"response": "(555,1,001,CAMERA,9,4,0,f)"}
    assert parse_instruction_reply(body({"Result": 200, "FObject": obj})).terminal_num == "555"
    obj_num = {"terminalNum": 804250900200, "response": "(555,1,001,CAMERA,9,4,0,f)"}
    assert parse_instruction_reply(body({"Result": 200, "FObject": obj_num})).terminal_num == "804250900200"


def test_instruction_reply_missing_message_is_empty() -> None:
    data = {"Result": 200, "FObject": {"response": DOC_RESPONSE}}
    assert parse_instruction_reply(body(data)).message == ""


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (102, ErrorCode.BAD_REQUEST),
        (104, ErrorCode.TOKEN_INVALID),
        (105, ErrorCode.CLOUD_EXCEPTION),
        (106, ErrorCode.NO_SUCH_DEVICE),
        (108, ErrorCode.SEND_FAILED),
        (111, ErrorCode.DEVICE_OFFLINE),
        (131, ErrorCode.NOT_SUPPORTED),
        (138, ErrorCode.DEVICE_TIMEOUT),
        (999, ErrorCode.CLOUD_ERROR),
        (201, ErrorCode.CLOUD_ERROR),
        (0, ErrorCode.CLOUD_ERROR),
    ],
)
def test_instruction_reply_result_codes(result: int, code: ErrorCode) -> None:
    with pytest.raises(CloudError) as info:
        parse_instruction_reply(body({"Result": result, "Message": "Action is error", "FObject": []}))
    exc = info.value
    assert exc.code is code
    assert exc.result == result
    assert "Action is error" in exc.message
    assert f"Result {result}" in exc.message
    assert exc.retryable is False


def test_instruction_reply_result_code_as_text() -> None:
    with pytest.raises(CloudError) as info:
        parse_instruction_reply(b'{"Result": "111", "Message": "offline", "FObject": []}')
    assert info.value.code is ErrorCode.DEVICE_OFFLINE
    assert info.value.result == 111


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"<html>gateway</html>",
        b"[]",
        b"[200]",
        b"null",
        b"{}",
        b'{"Result": null}',
        b'{"Result": 200.0, "FObject": {"response": "(1,1,1,1,1,1,0,x)"}}',
        b'{"Result": "\xc2\xb2"}',
        b'{"Result": "' + b"1" * 5000 + b'"}',
        b'{"Result": 200}',
        b'{"Result": 200, "FObject": []}',
        b'{"Result": 200, "FObject": {}}',
        b'{"Result": 200, "FObject": {"response": 5}}',
        b'{"Result": 200, "FObject": {"response": null}}',
        b'{"Result": 200, "FObject": {"response": "(1,2,3)"}}',
        b'{"Result": 200, "FObject": {"response": "(1,2,3,4,5,6,x,y)"}}',
        b"\xff\xfe\xfd",
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "text",
        "html",
        "array",
        "array-200",
        "null",
        "no-result",
        "result-null",
        "result-float",
        "result-superscript",
        "result-huge-text",
        "missing-fobject",
        "fobject-list",
        "missing-response",
        "response-number",
        "response-null",
        "short-response",
        "non-numeric-answer",
        "bad-bytes",
        "deeply-nested",
    ],
)
def test_instruction_reply_not_understood(raw: bytes) -> None:
    with pytest.raises(CloudError) as info:
        parse_instruction_reply(raw)
    assert info.value.code is ErrorCode.BAD_CLOUD_REPLY


def test_bad_response_keeps_the_result_code() -> None:
    with pytest.raises(CloudError) as info:
        parse_instruction_reply(body({"Result": 200, "FObject": {"response": "(1,2)"}}))
    assert info.value.code is ErrorCode.BAD_CLOUD_REPLY
    assert info.value.result == 200


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_result = _json | st.text(alphabet=st.characters(max_codepoint=0x3000), max_size=8).map(lambda s: "200" + s)
_response = st.text(max_size=60) | st.lists(st.text(alphabet="0123456789 \x1f\t_", max_size=6), min_size=6,
                                             max_size=9).map(lambda f: "(" + ",".join(f) + ")")


@given(result=_result | st.sampled_from(["0\x1f", "200\x1f", " 200 ", "\u2028200"]),
       fobject=_json | st.fixed_dictionaries({"response": _response}), message=_json)
def test_no_reply_shape_raises_anything_but_a_cloud_error(result: Any, fobject: Any, message: Any) -> None:
    body = json.dumps({"Result": result, "Message": message, "FObject": fobject}).encode()
    with contextlib.suppress(CloudError):
        parse_instruction_reply(body)
    with contextlib.suppress(CloudError):
        parse_login_reply(json.dumps({"Result": result, "FObject": fobject}).encode())


def test_a_result_with_a_trailing_control_character_is_a_number() -> None:
    with pytest.raises(CloudError) as raised:
        parse_instruction_reply(json.dumps({"Result": "0\x1f", "Message": "m", "FObject": []}).encode())
    assert raised.value.result == 0
