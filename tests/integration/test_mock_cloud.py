"""The mock cloud over real HTTP: the API contract, the behaviours, the faults and the server itself.

Every test talks to a `MockCloud` listening on an ephemeral port through `requests`
(or a raw socket / asyncio client where HTTP details matter), so what is checked is
what the bridge and the benchmark will actually see on the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import requests

from bridge.sim.behaviours import DEMO_DEVICES, DEMO_PASSWORD, DEMO_USER, Behaviour, Fault
from bridge.sim.server import MockCloud
from tests.support.cli import bridge_cli

OK_GUID = "a64b2e58-9305-4a01-9c51-092205123945"
OTHER_GUID = "0c0ffee0-0000-4000-8000-00000000abcd"
FIXED_TOKEN = "fixed-test-token"
TIMEOUT_DELAY = 0.2
HTTP_TIMEOUT = 5.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------------
def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def post(cloud: MockCloud, path: str, body: Any, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", HTTP_TIMEOUT)
    return requests.post(cloud.url + path, json=body, **kwargs)


def login(cloud: MockCloud, user: str = DEMO_USER, password: str = DEMO_PASSWORD) -> dict[str, Any]:
    reply: dict[str, Any] = post(cloud, "/login", {"FUserName": user, "FPassword": md5_hex(password)}).json()
    return reply


def instruction_body(token: str = FIXED_TOKEN, guid: str = OK_GUID, **params: Any) -> dict[str, Any]:
    photo: dict[str, Any] = {
        "FCameraID": "0",
        "FType": 1,
        "FCount": 3,
        "FDuration": 0,
        "FResolution": 2,
        "FInterval": 2,
    }
    photo.update(params)
    return {
        "FTokenID": token,
        "FAction": "ActiveNewPhotograph",
        "FAssetGUID": guid,
        "FT_GpActiveNewPhotograph": photo,
        "FTimeDifferent": 28800,
        "FLanguage": "1",
    }


def instruct(cloud: MockCloud, body: dict[str, Any] | None = None, **kwargs: Any) -> requests.Response:
    return post(cloud, "/Instruction", body if body is not None else instruction_body(), **kwargs)


def response_fields(reply: dict[str, Any]) -> list[str]:
    """The 8 comma-separated fields of FObject.response."""
    text = reply["FObject"]["response"]
    assert text.startswith("("), text
    assert text.endswith(")"), text
    fields: list[str] = text[1:-1].split(",")
    assert len(fields) == 8, text
    return fields


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from a raw socket file."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def raw_post(path: str, body: bytes, extra_headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


@pytest.fixture
def cloud() -> Iterator[MockCloud]:
    mock = MockCloud(fixed_tokens=(FIXED_TOKEN,), timeout_delay=TIMEOUT_DELAY).start()
    try:
        yield mock
    finally:
        mock.stop()


# -- login -----------------------------------------------------------------------------------------
def test_login_returns_a_token(cloud: MockCloud) -> None:
    reply = login(cloud)

    assert reply["Result"] == 200
    assert reply["Message"] == "success"
    (account,) = reply["FObject"]
    assert account["FUserName"] == DEMO_USER
    assert re.fullmatch(r"[0-9a-f]{32}", account["FTokenID"])
    assert account["FUserGUID"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", account["FExpireTime"])
    assert cloud.login_count == 1


def test_login_tokens_are_random_and_all_stay_valid(cloud: MockCloud) -> None:
    first = login(cloud)["FObject"][0]["FTokenID"]
    second = login(cloud)["FObject"][0]["FTokenID"]

    assert first != second
    assert instruct(cloud, instruction_body(token=first)).json()["Result"] == 200
    assert instruct(cloud, instruction_body(token=second)).json()["Result"] == 200


def test_login_requires_the_md5_of_the_password(cloud: MockCloud) -> None:
    reply = post(cloud, "/login", {"FUserName": DEMO_USER, "FPassword": DEMO_PASSWORD}).json()

    assert reply["Result"] == 103
    assert reply["FObject"] == []


def test_login_wrong_password_is_103(cloud: MockCloud) -> None:
    assert login(cloud, password="not-it")["Result"] == 103
    assert login(cloud, user="nobody")["Result"] == 103


def test_login_expired_account_is_106(cloud: MockCloud) -> None:
    cloud.account_expired.add(DEMO_USER)

    reply = login(cloud)

    assert reply["Result"] == 106
    assert reply["FObject"] == []


def test_login_custom_users(cloud: MockCloud) -> None:
    cloud.users = {"alice": "s3cret"}

    assert login(cloud, "alice", "s3cret")["Result"] == 200
    assert login(cloud)["Result"] == 103


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"FUserName": DEMO_USER},
        {"FPassword": md5_hex(DEMO_PASSWORD)},
        {"FUserName": 1, "FPassword": "x"},
        [],
    ],
)
def test_login_bad_parameters_are_102(cloud: MockCloud, body: Any) -> None:
    assert post(cloud, "/login", body).json()["Result"] == 102


def test_login_answers_immediately_despite_latency(cloud: MockCloud) -> None:
    cloud.latency = 0.5
    started = time.monotonic()

    assert login(cloud)["Result"] == 200
    assert time.monotonic() - started < 0.5


# -- instruction -----------------------------------------------------------------------------------
def test_instruction_ok_returns_a_file_id(cloud: MockCloud) -> None:
    token = login(cloud)["FObject"][0]["FTokenID"]

    response = instruct(cloud, instruction_body(token=token))

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    reply = response.json()
    assert reply["Result"] == 200
    assert reply["Message"] == "ins send ok"
    found = reply["FObject"]
    assert re.fullmatch(r"\d{12}", found["terminalNum"])
    assert re.fullmatch(r"[0-9a-f-]{36}", found["terminalStrId"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", found["dateTime"])
    assert abs(found["dateTimestamp"] / 1000 - time.time()) < 60
    fields = response_fields(reply)
    assert fields[0] == found["terminalNum"]
    assert fields[1:6] == ["1", "001", "CAMERA", "9", "4"]
    assert fields[6] == "0"
    assert fields[7].startswith(found["terminalNum"] + "_")
    assert cloud.instruction_count == 1


def test_instruction_terminal_is_stable_and_file_ids_unique(cloud: MockCloud) -> None:
    cloud.devices[OTHER_GUID] = Behaviour.OK
    first, second = (response_fields(instruct(cloud).json()) for _ in range(2))
    other = response_fields(instruct(cloud, instruction_body(guid=OTHER_GUID)).json())

    assert first[0] == second[0] != other[0]
    assert len({first[7], second[7], other[7]}) == 3


@pytest.mark.parametrize(
    ("behaviour", "result", "answer"),
    [
        (Behaviour.OK, 200, "0"),
        (Behaviour.BUSY, 200, "1"),
        (Behaviour.DEVICE_ERROR, 200, "2"),
        (Behaviour.OFFLINE, 111, None),
        (Behaviour.NOT_SUPPORTED, 131, None),
        (Behaviour.SEND_FAILED, 108, None),
        (Behaviour.TIMEOUT, 138, None),
        (Behaviour.EXCEPTION, 105, None),
        (Behaviour.UNKNOWN, 106, None),
    ],
)
def test_each_behaviour_gives_its_result(
    cloud: MockCloud, behaviour: Behaviour, result: int, answer: str | None
) -> None:
    cloud.devices[OTHER_GUID] = behaviour

    reply = instruct(cloud, instruction_body(guid=OTHER_GUID)).json()

    assert reply["Result"] == result
    if answer is None:
        assert reply["FObject"] == []
        assert reply["Message"]
    else:
        assert response_fields(reply)[6] == answer


def test_behaviour_may_be_given_as_a_plain_string(cloud: MockCloud) -> None:
    cloud.devices[OTHER_GUID] = "busy"

    assert response_fields(instruct(cloud, instruction_body(guid=OTHER_GUID)).json())[6] == "1"


def test_busy_reply_still_has_eight_fields(cloud: MockCloud) -> None:
    cloud.devices[OK_GUID] = Behaviour.BUSY

    fields = response_fields(instruct(cloud).json())

    assert fields[6:] == ["1", "0"]


def test_demo_devices_show_every_outcome() -> None:
    assert set(DEMO_DEVICES.values()) == set(Behaviour) - {Behaviour.UNKNOWN}
    assert DEMO_DEVICES[OK_GUID] == Behaviour.OK


def test_timeout_answers_138_after_timeout_delay(cloud: MockCloud) -> None:
    cloud.devices[OTHER_GUID] = Behaviour.TIMEOUT
    started = time.monotonic()

    reply = instruct(cloud, instruction_body(guid=OTHER_GUID)).json()

    assert reply["Result"] == 138
    assert time.monotonic() - started >= TIMEOUT_DELAY


def test_latency_is_honoured(cloud: MockCloud) -> None:
    cloud.latency = 0.3
    started = time.monotonic()

    reply = instruct(cloud).json()

    assert reply["Result"] == 200
    assert time.monotonic() - started >= 0.3


def test_unknown_guid_is_106(cloud: MockCloud) -> None:
    reply = instruct(cloud, instruction_body(guid=OTHER_GUID)).json()

    assert reply["Result"] == 106


def test_default_behaviour_applies_to_unlisted_guids(cloud: MockCloud) -> None:
    cloud.default_behaviour = "ok"

    assert instruct(cloud, instruction_body(guid=OTHER_GUID)).json()["Result"] == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"FType": 4}, "FType"),
        ({"FType": 1, "FCount": 0}, "FCount"),
        ({"FType": 3, "FCount": 0, "FDuration": 5}, "FCount"),
        ({"FType": 2, "FCount": 3, "FDuration": 5}, "FCount"),
        ({"FType": 2, "FCount": 0, "FDuration": 0}, "FDuration"),
        ({"FType": 1, "FDuration": 5}, "FDuration"),
        ({"FResolution": 4}, "FResolution"),
        ({"FResolution": -1}, "FResolution"),
        ({"FInterval": -1}, "FInterval"),
        ({"FCameraID": 0}, "FCameraID"),
        ({"FCameraID": "2"}, "FCameraID"),
        ({"FType": "1"}, "FType"),
        ({"FCount": True}, "FCount"),
        ({"FCount": None}, "FCount"),
    ],
)
def test_bad_parameters_are_102_naming_the_field(
    cloud: MockCloud, params: dict[str, Any], field: str
) -> None:
    reply = instruct(cloud, instruction_body(**params)).json()

    assert reply["Result"] == 102
    assert field in reply["Message"]
    assert reply["FObject"] == []


def test_video_and_photo_video_parameters_are_accepted(cloud: MockCloud) -> None:
    video = instruction_body(FType=2, FCount=0, FDuration=10, FCameraID="1")
    both = instruction_body(FType=3, FCount=1, FDuration=10, FResolution=0, FInterval=0)

    assert instruct(cloud, video).json()["Result"] == 200
    assert instruct(cloud, both).json()["Result"] == 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"FAction": "Reboot"}, "Action is error"),
        ({"FAssetGUID": None}, "FAssetGUID"),
        ({"FT_GpActiveNewPhotograph": None}, "FT_GpActiveNewPhotograph"),
        ({"FTokenID": None}, "FTokenID"),
        ({"FTimeDifferent": "8h"}, "FTimeDifferent"),
    ],
)
def test_bad_envelope_is_102(cloud: MockCloud, change: dict[str, Any], message: str) -> None:
    body = instruction_body()
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value

    reply = instruct(cloud, body).json()

    assert reply["Result"] == 102
    assert message in reply["Message"]


def test_non_json_body_is_102(cloud: MockCloud) -> None:
    response = requests.post(cloud.url + "/Instruction", data=b"{nope", timeout=HTTP_TIMEOUT)

    assert response.json()["Result"] == 102


# -- tokens ----------------------------------------------------------------------------------------
def test_unissued_token_is_104(cloud: MockCloud) -> None:
    reply = instruct(cloud, instruction_body(token="0" * 32)).json()

    assert reply["Result"] == 104


def test_expired_tokens_are_104_until_a_new_login(cloud: MockCloud) -> None:
    token = login(cloud)["FObject"][0]["FTokenID"]
    assert instruct(cloud, instruction_body(token=token)).json()["Result"] == 200

    cloud.expire_tokens()

    assert instruct(cloud, instruction_body(token=token)).json()["Result"] == 104
    assert instruct(cloud, instruction_body(token=FIXED_TOKEN)).json()["Result"] == 104
    fresh = login(cloud)["FObject"][0]["FTokenID"]
    assert instruct(cloud, instruction_body(token=fresh)).json()["Result"] == 200


# -- faults ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "status"), [(Fault.HTTP_500, 500), (Fault.HTTP_503, 503), (Fault.HTTP_429, 429)]
)
def test_http_status_faults(cloud: MockCloud, fault: Fault, status: int) -> None:
    cloud.fault = fault

    assert instruct(cloud).status_code == status


def test_not_json_fault(cloud: MockCloud) -> None:
    cloud.fault = Fault.NOT_JSON

    response = instruct(cloud)

    assert response.status_code == 200
    assert response.text == "<html>oops"
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_missing_fields_fault(cloud: MockCloud) -> None:
    cloud.fault = Fault.MISSING_FIELDS

    assert instruct(cloud).json() == {"Result": 200}


def test_bad_response_fault(cloud: MockCloud) -> None:
    cloud.fault = Fault.BAD_RESPONSE

    reply = instruct(cloud).json()

    assert reply["Result"] == 200
    assert reply["FObject"]["response"] == "garbage"


def test_unknown_result_fault(cloud: MockCloud) -> None:
    cloud.fault = "unknown_result"

    assert instruct(cloud).json()["Result"] == 999


def test_reset_fault_breaks_the_connection(cloud: MockCloud) -> None:
    cloud.fault = Fault.RESET

    with pytest.raises(requests.ConnectionError):
        instruct(cloud)
    assert cloud.instruction_count == 1  # the request was read before the reset


def test_hang_fault_never_answers(cloud: MockCloud) -> None:
    cloud.fault = Fault.HANG

    with pytest.raises(requests.Timeout):
        instruct(cloud, timeout=0.3)
    assert cloud.instruction_count == 1


def test_fault_count_reverts_after_n_requests(cloud: MockCloud) -> None:
    cloud.fault_count = 2
    cloud.fault = Fault.HTTP_503

    statuses = [instruct(cloud).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert cloud.fault is Fault.NONE
    assert cloud.fault_count is None


def test_faults_spare_login_unless_fault_login(cloud: MockCloud) -> None:
    cloud.fault = Fault.HTTP_500
    assert login(cloud)["Result"] == 200
    assert instruct(cloud).status_code == 500

    cloud.fault_login = True
    response = post(cloud, "/login", {"FUserName": DEMO_USER, "FPassword": md5_hex(DEMO_PASSWORD)})

    assert response.status_code == 500


# -- HTTP server behaviour -------------------------------------------------------------------------
def test_keep_alive_reuses_one_connection(cloud: MockCloud) -> None:
    with requests.Session() as session:
        results = [
            session.post(cloud.url + "/Instruction", json=instruction_body(), timeout=HTTP_TIMEOUT).json()
            for _ in range(3)
        ]

    assert [r["Result"] for r in results] == [200, 200, 200]
    assert cloud.connections_accepted == 1


def test_pipelined_requests_are_answered_in_order(cloud: MockCloud) -> None:
    # The first reply is the slow one: answers must still come back in request order.
    cloud.latency = 0.2
    slow = raw_post("/OpenApi/Instruction", json.dumps(instruction_body()).encode())
    login_body = f'{{"FUserName": "{DEMO_USER}", "FPassword": "{md5_hex(DEMO_PASSWORD)}"}}'.encode()
    fast = raw_post("/OpenApi/login", login_body)
    missing = raw_post("/elsewhere", b"", "Connection: close\r\n")

    with socket.create_connection((cloud.host, cloud.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(slow + fast + missing)
        stream = sock.makefile("rb")
        first, second, third = (read_response(stream) for _ in range(3))
        assert stream.read() == b""  # closed after the `Connection: close` request

    assert first[0] == 200
    assert b'"ins send ok"' in first[2]
    assert second[0] == 200
    assert b'"FTokenID"' in second[2]
    assert third[0] == 404
    assert third[1]["connection"] == "close"


def test_split_request_is_reassembled(cloud: MockCloud) -> None:
    request = raw_post("/OpenApi/Instruction", json.dumps(instruction_body()).encode())

    with socket.create_connection((cloud.host, cloud.port), timeout=HTTP_TIMEOUT) as sock:
        for i in range(0, len(request), 7):
            sock.sendall(request[i : i + 7])
        status, _, body = read_response(sock.makefile("rb"))

    assert status == 200
    assert b'"ins send ok"' in body


def test_chunked_body_is_read_like_any_other(cloud: MockCloud) -> None:
    request = (
        b"POST /OpenApi/Instruction HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )

    with socket.create_connection((cloud.host, cloud.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(request)
        status, _, body = read_response(sock.makefile("rb"))

    assert status == 200
    assert json.loads(body)["Message"] == "FTokenID is required"
    assert cloud.instruction_count == 1


def test_unknown_path_is_404(cloud: MockCloud) -> None:
    response = post(cloud, "/Nope", {})

    assert response.status_code == 404
    assert cloud.instruction_count == 0


def test_non_post_is_405(cloud: MockCloud) -> None:
    response = requests.get(cloud.url + "/Instruction", timeout=HTTP_TIMEOUT)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert cloud.instruction_count == 0


def test_200_concurrent_requests_overlap(cloud: MockCloud) -> None:
    cloud.latency = 0.5
    request = raw_post("/OpenApi/Instruction", json.dumps(instruction_body()).encode())

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.startswith(b"Content-Length:")
            )
            body = await reader.readexactly(length)
            return int(b'"Result": 200' in body and head.startswith(b"HTTP/1.1 200"))
        finally:
            writer.close()
            await writer.wait_closed()

    async def run() -> int:
        connections = await asyncio.gather(
            *(asyncio.open_connection(cloud.host, cloud.port) for _ in range(200))
        )
        for _, writer in connections:
            writer.write(request)
        return sum(await asyncio.gather(*(one(r, w) for r, w in connections)))

    started = time.monotonic()
    succeeded = asyncio.run(asyncio.wait_for(run(), timeout=10))
    elapsed = time.monotonic() - started

    assert succeeded == 200
    assert 0.5 <= elapsed < 5
    assert cloud.max_concurrent == 200
    assert cloud.connections_accepted == 200


# -- recording -------------------------------------------------------------------------------------
def test_requests_are_recorded_in_order(cloud: MockCloud) -> None:
    cloud.devices[OTHER_GUID] = Behaviour.OK
    before = time.monotonic()
    login(cloud)
    instruct(cloud, instruction_body(guid=OTHER_GUID, FCount=7))
    instruct(cloud)
    post(cloud, "/Nope", None)

    assert [r.path for r in cloud.requests] == [
        "/OpenApi/login",
        "/OpenApi/Instruction",
        "/OpenApi/Instruction",
        "/OpenApi/Nope",
    ]
    times = [r.at for r in cloud.requests]
    assert before <= times[0]
    assert times == sorted(times)
    assert cloud.requests[0].body == {"FUserName": DEMO_USER, "FPassword": md5_hex(DEMO_PASSWORD)}
    assert cloud.requests[3].body is None
    (other,) = cloud.instructions_for(OTHER_GUID)
    assert other["FT_GpActiveNewPhotograph"]["FCount"] == 7
    assert len(cloud.instructions_for(OK_GUID)) == 1
    assert (cloud.login_count, cloud.instruction_count) == (1, 2)


def test_record_false_keeps_only_counters() -> None:
    with MockCloud(fixed_tokens=(FIXED_TOKEN,), record=False) as mock:
        login(mock)
        assert instruct(mock).json()["Result"] == 200

    assert mock.requests == []
    assert (mock.login_count, mock.instruction_count) == (1, 1)


# -- lifecycle and entry points --------------------------------------------------------------------
def test_stop_releases_the_port_even_with_a_hung_request() -> None:
    mock = MockCloud(fixed_tokens=(FIXED_TOKEN,)).start()
    mock.fault = Fault.HANG
    with pytest.raises(requests.Timeout):
        instruct(mock, timeout=0.2)

    mock.stop()

    with pytest.raises(requests.ConnectionError):
        instruct(mock, timeout=1)


def test_invalid_behaviour_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="sleepy"):
        MockCloud(devices={OK_GUID: "sleepy"})


def test_serve_runs_in_the_current_loop_until_cancelled() -> None:
    mock = MockCloud()

    async def scenario() -> bytes:
        listening = asyncio.Event()
        task = asyncio.create_task(mock.serve(listening))
        await listening.wait()
        reader, writer = await asyncio.open_connection(mock.host, mock.port)
        writer.write(raw_post("/OpenApi/Instruction", b"{}"))
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return head

    head = asyncio.run(asyncio.wait_for(scenario(), timeout=10))

    assert head.startswith(b"HTTP/1.1 200 OK")
    assert mock.instruction_count == 1


def test_run_mock_cloud_prints_one_line_and_stops_on_sigterm() -> None:
    code = (
        "from bridge.sim.server import run_mock_cloud; run_mock_cloud('127.0.0.1', 0, 0.0, 'ok', 'cli-token', True)"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.fullmatch(
                r"mock-cloud listening on (http://127\.0\.0\.1:\d+/OpenApi) \(user demo / demo-password\)\n",
                line,
            )
            assert match, line
            body = instruction_body(token="cli-token", guid=OTHER_GUID)  # default behaviour "ok"
            reply = requests.post(match[1] + "/Instruction", json=body, timeout=HTTP_TIMEOUT).json()
            assert reply["Result"] == 200

            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()

    assert process.returncode == 0, stderr
    assert stdout == ""
    assert "cli-token" not in stderr


def test_cli_mock_cloud_accepts_any_account_unless_strict() -> None:
    """`capture-bridge mock-cloud` lets a config written for the real cloud work unchanged."""
    with subprocess.Popen(
        [sys.executable, "-m", "bridge", "mock-cloud", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.fullmatch(r"mock-cloud listening on (\S+) \(any user and token accepted\)\n", line)
            assert match, line
            login = requests.post(match[1] + "/login", json={"FUserName": "fleet-admin", "FPassword": "0" * 32},
                                  timeout=HTTP_TIMEOUT).json()
            assert login["Result"] == 200
            body = instruction_body(token="a-token-from-some-config", guid=OK_GUID)
            assert requests.post(match[1] + "/Instruction", json=body, timeout=HTTP_TIMEOUT).json()["Result"] == 200
            body = instruction_body(token="x", guid=str(uuid.uuid4()))
            assert requests.post(match[1] + "/Instruction", json=body, timeout=HTTP_TIMEOUT).json()["Result"] == 106
        finally:
            process.terminate()
            process.wait(10)


def test_cli_mock_cloud_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = bridge_cli("mock-cloud", "--port", str(port), cwd=PROJECT_ROOT)

    assert result.returncode == 1
    expected = f"capture-bridge: cannot listen on 127.0.0.1:{port} (--host/--port): Address already in use\n"
    assert result.stderr == expected
