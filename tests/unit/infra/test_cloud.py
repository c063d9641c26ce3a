"""CloudClient over an in-memory fake Transport: token caching, one shared re-login, retries, deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.config import CloudConfig
from bridge.core.errors import CloudError, ErrorCode
from bridge.core.reply import INSTRUCTION_PATH, LOGIN_PATH, InstructionReply, md5_hex
from bridge.infra.cloud import CloudClient
from bridge.infra.transport import HttpReply, TransportError
from tests.support.aio import run

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
PARAMS: dict[str, Any] = {"FCameraID": "0", "FType": 1, "FCount": 3, "FDuration": 0, "FResolution": 2, "FInterval": 2}
PASSWORD = "demo-Pa55word"
RESPONSE = "(804250900200,1,001,CAMERA,9,4,0,700160818000_1769373855)"

# A step of a script: a reply, a transport failure, or a function of the request body.
Step = HttpReply | TransportError | Callable[[dict[str, Any]], HttpReply]


def reply(data: object, status: int = 200) -> HttpReply:
    return HttpReply(status, json.dumps(data).encode())


def ok_reply(message: str = "ins send ok") -> HttpReply:
    return reply({"Result": 200, "Message": message, "FObject": {"terminalNum": "804250900200", "response": RESPONSE}})


def result(code: int) -> HttpReply:
    return reply({"Result": code, "Message": f"error {code}", "FObject": []})


def login_ok(token: str) -> HttpReply:
    return reply({"Result": 200, "Message": "success", "FObject": [{"FUserName": "demo", "FTokenID": token}]})


@dataclass
class FakeTransport:
    """Plays a script per path (the last step repeats) and records every request."""

    login: list[Step] = field(default_factory=lambda: [login_ok("tok-1")])
    instruction: list[Step] = field(default_factory=lambda: [ok_reply()])
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    async def post_json(self, path: str, body: bytes) -> HttpReply:
        data = json.loads(body)
        self.calls.append((path, data))
        self.raw.append(body)
        await asyncio.sleep(0)  # let concurrent callers interleave, as a real network would
        script = self.login if path == LOGIN_PATH else self.instruction
        step = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(step, TransportError):
            raise step
        if callable(step):
            return step(data)
        return step

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def tokens(self) -> list[str]:
        return [data["FTokenID"] for path, data in self.calls if path == INSTRUCTION_PATH]


@dataclass
class FakeTime:
    """A clock that only moves when the client sleeps; records every delay."""

    now: float = 1000.0
    delays: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay


def config(**values: Any) -> CloudConfig:
    data: dict[str, Any] = {"base_url": "http://cloud.test/OpenApi", "username": "demo", "password": PASSWORD}
    data.update(values)
    return CloudConfig.model_validate(data)


def client(transport: FakeTransport, cfg: CloudConfig, time: FakeTime, jitter: float = 1.0) -> CloudClient:
    return CloudClient(transport, cfg, sleep=time.sleep, clock=time.clock, jitter=lambda: jitter)


def capture_error(transport: FakeTransport, cfg: CloudConfig, time: FakeTime | None = None) -> CloudError:
    c = client(transport, cfg, time or FakeTime())
    with pytest.raises(CloudError) as info:
        run(c.capture(GUID, PARAMS))
    return info.value


# --- token handling -------------------------------------------------------------------------


def test_logs_in_once_and_caches_the_token() -> None:
    transport = FakeTransport()
    c = client(transport, config(), FakeTime())

    async def go() -> list[InstructionReply]:
        return [await c.capture(GUID, PARAMS) for _ in range(3)]

    replies = run(go())
    assert [r.device.file_id for r in replies] == ["700160818000_1769373855"] * 3
    assert transport.paths() == [LOGIN_PATH, INSTRUCTION_PATH, INSTRUCTION_PATH, INSTRUCTION_PATH]
    assert transport.tokens() == ["tok-1"] * 3
    assert c.login_count == 1


def test_login_sends_the_password_as_md5() -> None:
    transport = FakeTransport()
    run(client(transport, config(), FakeTime()).capture(GUID, PARAMS))
    path, data = transport.calls[0]
    assert path == LOGIN_PATH
    assert data == {"FUserName": "demo", "FPassword": md5_hex(PASSWORD)}
    assert all(PASSWORD.encode() not in raw for raw in transport.raw)


def test_instruction_request_body() -> None:
    transport = FakeTransport()
    cfg = config(token="fixed-tok", time_difference=3600, language="2")
    run(client(transport, cfg, FakeTime()).capture(GUID, PARAMS))
    assert transport.calls == [
        (
            INSTRUCTION_PATH,
            {
                "FTokenID": "fixed-tok",
                "FAction": "ActiveNewPhotograph",
                "FAssetGUID": GUID,
                "FT_GpActiveNewPhotograph": PARAMS,
                "FTimeDifferent": 3600,
                "FLanguage": "2",
            },
        )
    ]


def test_fixed_token_is_used_without_login() -> None:
    transport = FakeTransport()
    c = client(transport, config(token="fixed-tok", username=None, password=None), FakeTime())
    got = run(c.capture(GUID, PARAMS))
    assert got.message == "ins send ok"
    assert got.tries == 1
    assert transport.paths() == [INSTRUCTION_PATH]
    assert transport.tokens() == ["fixed-tok"]
    assert c.login_count == 0


def test_token_rejected_once_relogin_and_retry() -> None:
    transport = FakeTransport(login=[login_ok("tok-2")], instruction=[result(104), ok_reply()])
    c = client(transport, config(token="old-tok"), FakeTime())
    got = run(c.capture(GUID, PARAMS))
    assert got.device.answer == 0
    assert transport.paths() == [INSTRUCTION_PATH, LOGIN_PATH, INSTRUCTION_PATH]
    assert transport.tokens() == ["old-tok", "tok-2"]
    assert c.login_count == 1


def test_new_token_is_kept_after_relogin() -> None:
    transport = FakeTransport(login=[login_ok("tok-2")], instruction=[result(104), ok_reply()])
    c = client(transport, config(token="old-tok"), FakeTime())

    async def go() -> None:
        await c.capture(GUID, PARAMS)
        await c.capture(GUID, PARAMS)

    run(go())
    assert transport.tokens() == ["old-tok", "tok-2", "tok-2"]
    assert c.login_count == 1


def test_token_rejected_twice_is_token_invalid() -> None:
    transport = FakeTransport(login=[login_ok("tok-2")], instruction=[result(104)])
    time = FakeTime()
    c = client(transport, config(token="old-tok"), time)
    with pytest.raises(CloudError) as info:
        run(c.capture(GUID, PARAMS))
    assert info.value.code is ErrorCode.TOKEN_INVALID
    assert info.value.result == 104
    assert transport.paths() == [INSTRUCTION_PATH, LOGIN_PATH, INSTRUCTION_PATH]
    assert c.login_count == 1
    assert time.delays == []  # not retried


def test_token_rejected_without_credentials() -> None:
    transport = FakeTransport(instruction=[result(104)])
    exc = capture_error(transport, config(token="fixed-tok", username=None, password=None))
    assert exc.code is ErrorCode.TOKEN_INVALID
    assert exc.result == 104
    assert transport.paths() == [INSTRUCTION_PATH]


def test_concurrent_token_rejections_share_one_login() -> None:
    valid = {"tok-new"}

    def instruction(data: dict[str, Any]) -> HttpReply:
        return ok_reply() if data["FTokenID"] in valid else result(104)

    transport = FakeTransport(login=[login_ok("tok-new")], instruction=[instruction])
    c = client(transport, config(token="tok-old"), FakeTime())

    async def go() -> list[InstructionReply]:
        return await asyncio.gather(*(c.capture(GUID, PARAMS) for _ in range(20)))

    replies = run(go())
    assert len(replies) == 20
    assert all(r.device.answer == 0 for r in replies)
    assert transport.paths().count(LOGIN_PATH) == 1
    assert c.login_count == 1
    tokens = transport.tokens()
    assert tokens.count("tok-old") == 20
    assert tokens.count("tok-new") == 20


def test_concurrent_first_calls_share_one_login() -> None:
    transport = FakeTransport()
    c = client(transport, config(), FakeTime())

    async def go() -> list[InstructionReply]:
        return await asyncio.gather(*(c.capture(GUID, PARAMS) for _ in range(20)))

    assert len(run(go())) == 20
    assert transport.paths().count(LOGIN_PATH) == 1
    assert transport.tokens() == ["tok-1"] * 20


@pytest.mark.parametrize("code", [103, 106, 102])
def test_login_refused(code: int) -> None:
    transport = FakeTransport(login=[result(code)])
    time = FakeTime()
    exc = capture_error(transport, config(), time)
    assert exc.code is ErrorCode.LOGIN_FAILED
    assert exc.result == code
    assert transport.paths() == [LOGIN_PATH]
    assert time.delays == []
    assert PASSWORD not in exc.message


def test_failed_login_is_tried_again_by_the_next_call() -> None:
    transport = FakeTransport(login=[result(105), login_ok("tok-9")])
    c = client(transport, config(), FakeTime())

    async def go() -> InstructionReply:
        with pytest.raises(CloudError):
            await c.capture(GUID, PARAMS)
        return await c.capture(GUID, PARAMS)

    assert run(go()).device.answer == 0
    assert transport.paths() == [LOGIN_PATH, LOGIN_PATH, INSTRUCTION_PATH]
    assert transport.tokens() == ["tok-9"]


# --- retries --------------------------------------------------------------------------------


def test_transport_errors_are_retried_with_growing_backoff() -> None:
    refused = TransportError("connection refused", sent=False)
    transport = FakeTransport(instruction=[refused])
    time = FakeTime()
    cfg = config(token="t", retry_attempts=4, retry_backoff=0.5, retry_backoff_max=5.0)
    exc = capture_error(transport, cfg, time)
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert exc.result is None
    assert "(after 4 tries)" in exc.message
    assert "(after 4 tries)" in str(exc)
    assert "connection refused" in exc.message
    assert transport.paths() == [INSTRUCTION_PATH] * 4
    assert time.delays == [0.5, 1.0, 2.0]


def test_backoff_is_capped_and_jittered() -> None:
    transport = FakeTransport(instruction=[TransportError("reset", sent=False)])
    time = FakeTime()
    cfg = config(token="t", retry_attempts=5, retry_backoff=1.0, retry_backoff_max=3.0, retry_deadline=1000)
    c = client(transport, cfg, time, jitter=0.0)
    with pytest.raises(CloudError):
        run(c.capture(GUID, PARAMS))
    # jitter 0 -> half of the exponential delay, capped at retry_backoff_max before halving
    assert time.delays == [0.5, 1.0, 1.5, 1.5]


def test_transport_error_then_success() -> None:
    transport = FakeTransport(instruction=[TransportError("connection refused", sent=False), ok_reply()])
    time = FakeTime()
    got = run(client(transport, config(token="t"), time).capture(GUID, PARAMS))
    assert got.tries == 2
    assert got.message == "ins send ok (after 2 tries)"
    assert got.device.file_id == "700160818000_1769373855"
    assert time.delays == [0.5]


def test_single_attempt_message_has_no_try_count() -> None:
    transport = FakeTransport(instruction=[TransportError("connection refused", sent=False)])
    exc = capture_error(transport, config(token="t", retry_attempts=1))
    assert "tries" not in exc.message
    assert len(transport.calls) == 1


@pytest.mark.parametrize("status", [503, 429])
def test_not_now_statuses_are_retried(status: int) -> None:
    transport = FakeTransport(instruction=[HttpReply(status, b"busy"), ok_reply()])
    time = FakeTime()
    got = run(client(transport, config(token="t"), time).capture(GUID, PARAMS))
    assert got.tries == 2
    assert got.message == "ins send ok (after 2 tries)"
    assert len(transport.calls) == 2


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_after_sending_are_never_retried(status: int) -> None:
    transport = FakeTransport(instruction=[HttpReply(status, b"oops"), ok_reply()])
    time = FakeTime()
    exc = capture_error(transport, config(token="t"), time)
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert exc.message == f"cloud answered HTTP {status}; the cloud may have received it"
    assert len(transport.calls) == 1
    assert time.delays == []


def test_retry_after_is_honoured() -> None:
    transport = FakeTransport(instruction=[HttpReply(503, b"", retry_after=7.0), ok_reply()])
    time = FakeTime()
    got = run(client(transport, config(token="t"), time).capture(GUID, PARAMS))
    assert got.tries == 2
    assert time.delays == [7.0]


def test_retry_after_past_the_deadline_ends_the_command() -> None:
    transport = FakeTransport(instruction=[HttpReply(429, b"", retry_after=120.0), ok_reply()])
    time = FakeTime()
    exc = capture_error(transport, config(token="t", retry_deadline=45.0), time)
    assert exc.message == "cloud answered HTTP 429"
    assert len(transport.calls) == 1
    assert time.delays == []


@pytest.mark.parametrize("status", [503, 429])
def test_retryable_http_status_gives_up(status: int) -> None:
    transport = FakeTransport(instruction=[HttpReply(status, b"")])
    exc = capture_error(transport, config(token="t", retry_attempts=3))
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert f"HTTP {status}" in exc.message
    assert "(after 3 tries)" in exc.message
    assert len(transport.calls) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 301])
def test_client_error_status_is_not_retried(status: int) -> None:
    transport = FakeTransport(instruction=[HttpReply(status, b"{}"), ok_reply()])
    time = FakeTime()
    exc = capture_error(transport, config(token="t"), time)
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert f"HTTP {status}" in exc.message
    assert len(transport.calls) == 1
    assert time.delays == []


def test_http_error_on_login_is_cloud_unreachable() -> None:
    transport = FakeTransport(login=[HttpReply(503, b"")])
    exc = capture_error(transport, config(retry_attempts=2))
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert transport.paths() == [LOGIN_PATH, LOGIN_PATH]


@pytest.mark.parametrize(
    "failure",
    [HttpReply(500, b""), HttpReply(502, b""), TransportError("connection reset", sent=True),
     TransportError("no reply within 20 s", sent=True)],
)
def test_login_is_retried_even_after_sending(failure: HttpReply | TransportError) -> None:
    # Logging in fires no camera: any transient failure may be tried again.
    transport = FakeTransport(login=[failure, login_ok("tok-2")])
    got = run(client(transport, config(), FakeTime()).capture(GUID, PARAMS))
    assert got.tries == 1
    assert transport.paths() == [LOGIN_PATH, LOGIN_PATH, INSTRUCTION_PATH]


def test_device_timeout_is_never_retried() -> None:
    transport = FakeTransport(instruction=[result(138), ok_reply()])
    time = FakeTime()
    exc = capture_error(transport, config(token="t", retry_attempts=5), time)
    assert exc.code is ErrorCode.DEVICE_TIMEOUT
    assert exc.result == 138
    assert exc.message == "error 138 (Result 138); the cloud may have received it"
    assert len(transport.calls) == 1
    assert time.delays == []


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (102, ErrorCode.BAD_REQUEST),
        (105, ErrorCode.CLOUD_EXCEPTION),
        (106, ErrorCode.NO_SUCH_DEVICE),
        (108, ErrorCode.SEND_FAILED),
        (111, ErrorCode.DEVICE_OFFLINE),
        (131, ErrorCode.NOT_SUPPORTED),
        (999, ErrorCode.CLOUD_ERROR),
    ],
)
def test_cloud_result_errors_are_not_retried(code: int, error: ErrorCode) -> None:
    transport = FakeTransport(instruction=[result(code), ok_reply()])
    exc = capture_error(transport, config(token="t"))
    assert exc.code is error
    assert exc.result == code
    assert len(transport.calls) == 1


def test_bad_reply_is_not_retried() -> None:
    transport = FakeTransport(instruction=[HttpReply(200, b"<html>"), ok_reply()])
    exc = capture_error(transport, config(token="t"))
    assert exc.code is ErrorCode.BAD_CLOUD_REPLY
    assert len(transport.calls) == 1


def test_deadline_stops_retries() -> None:
    transport = FakeTransport(instruction=[TransportError("connection refused", sent=False)])
    time = FakeTime()
    cfg = config(token="t", retry_attempts=10, retry_backoff=0.5, retry_backoff_max=5.0, retry_deadline=1.0)
    exc = capture_error(transport, cfg, time)
    # try 1 at t=0, sleep 0.5, try 2 at t=0.5; the next delay (1.0) would end past the deadline
    assert time.delays == [0.5]
    assert len(transport.calls) == 2
    assert "(after 2 tries)" in exc.message
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE


def test_deadline_counts_time_spent_in_calls() -> None:
    time = FakeTime()

    def slow(data: dict[str, Any]) -> HttpReply:
        time.now += 10.0  # each call takes 10 s of the deadline
        return HttpReply(503, b"")

    transport = FakeTransport(instruction=[slow])
    cfg = config(token="t", retry_attempts=10, retry_backoff=0.1, retry_deadline=25.0)
    capture_error(transport, cfg, time)
    assert len(transport.calls) == 3  # t=10, 20.1, then 30.3 is past the deadline: no 4th try
    assert time.now - 1000.0 < 25.0 + 10.0 + 1.0


@pytest.mark.parametrize(
    "failure",
    [TransportError("no reply within 20 s", sent=True), TransportError("connection reset", sent=True),
     TransportError("server closed the connection without a reply", sent=True)],
)
def test_transport_failure_after_sending_is_never_retried(failure: TransportError) -> None:
    transport = FakeTransport(instruction=[failure, ok_reply()])
    time = FakeTime()
    exc = capture_error(transport, config(token="t", retry_attempts=5), time)
    assert exc.code is ErrorCode.CLOUD_UNREACHABLE
    assert exc.sent is True
    assert exc.message == f"cloud unreachable: {failure.message}; the cloud may have received it"
    assert len(transport.calls) == 1
    assert time.delays == []


def test_malformed_reply_is_bad_cloud_reply_and_not_retried() -> None:
    bad = TransportError("malformed HTTP reply: bad Content-Length", sent=True, retryable=False, bad_reply=True)
    transport = FakeTransport(instruction=[bad, ok_reply()])
    exc = capture_error(transport, config(token="t"))
    assert exc.code is ErrorCode.BAD_CLOUD_REPLY
    assert "may have received it" in exc.message
    assert len(transport.calls) == 1


def test_failure_not_sent_after_a_503_still_counts_tries() -> None:
    transport = FakeTransport(instruction=[HttpReply(503, b""), TransportError("connection refused", sent=False),
                                           ok_reply()])
    got = run(client(transport, config(token="t"), FakeTime()).capture(GUID, PARAMS))
    assert got.tries == 3
    assert len(transport.calls) == 3


def test_secrets_never_in_error_messages() -> None:
    transport = FakeTransport(login=[login_ok("tok-secret-777")], instruction=[result(104)])
    exc = capture_error(transport, config())
    for secret in ("tok-secret-777", PASSWORD, md5_hex(PASSWORD)):
        assert secret not in exc.message
