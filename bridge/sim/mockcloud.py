"""A local simulator of the vendor cloud API (`/OpenApi/login`, `/OpenApi/Instruction`).

It serves three masters, which is why it looks the way it does:

* the demo (`capture-bridge mock-cloud --port N` -> `run_mock_cloud`),
* the integration tests, which need a *real* HTTP server whose behaviour they can
  change between requests (per-device `Behaviour`, transport-level `Fault`),
* the throughput benchmark, which holds 1000-10000 requests open at once for a
  configurable latency.

The HTTP layer is aiohttp.web (HTTP/1.1 keep-alive, pipelining, chunked bodies,
HTTPS when given a certificate, idle connections closed after `idle_timeout` like a
real server); a delayed answer is an `asyncio.sleep` in the handler, so 10,000 held
requests cost 10,000 small coroutines. The transport-level faults (reset, close
after reading, a huge Content-Length, a truncated body) write to the connection
directly, beneath aiohttp.

Result codes and reply shapes follow the vendor's documentation (see SPEC.md).
Nothing here logs passwords or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import hmac
import json
import logging
import secrets
import signal
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

from aiohttp import web

log = logging.getLogger(__name__)

DEMO_USER: Final = "demo"
DEMO_PASSWORD: Final = "demo-password"  # noqa: S105 - a public demo credential, printed on purpose

ACTION: Final = "ActiveNewPhotograph"
PARAMS_KEY: Final = "FT_GpActiveNewPhotograph"


class Behaviour(StrEnum):
    """How a simulated device answers an Instruction (the Result code it leads to)."""

    OK = "ok"  # 200, device answer 0, a file id
    BUSY = "busy"  # 200, device answer 1 (camera busy)
    OFFLINE = "offline"  # 111
    NOT_SUPPORTED = "not_supported"  # 131
    SEND_FAILED = "send_failed"  # 108
    TIMEOUT = "timeout"  # 138, after `timeout_delay` seconds
    EXCEPTION = "exception"  # 105
    DEVICE_ERROR = "device_error"  # 200, device answer 2
    UNKNOWN = "unknown"  # 106
    BAD_REQUEST = "bad_request"  # 102, as if the parameters were refused
    TOKEN_ERROR = "token_error"  # noqa: S105 - 104 every time, even with a fresh token


class Fault(StrEnum):
    """Transport-level misbehaviour, injected in front of the API logic."""

    NONE = "none"
    HTTP_500 = "http_500"
    HTTP_502 = "http_502"
    HTTP_503 = "http_503"  # with Retry-After: `retry_after`
    HTTP_504 = "http_504"
    HTTP_429 = "http_429"  # with Retry-After: `retry_after`
    NOT_JSON = "not_json"  # 200 with an HTML body
    MISSING_FIELDS = "missing_fields"  # 200 {"Result": 200}, no FObject
    BAD_RESPONSE = "bad_response"  # 200, Result 200, unparseable `response` string
    RESET = "reset"  # TCP RST after the request was read
    CLOSE = "close"  # close the connection after reading the request, no reply (a load balancer's cut)
    HANG = "hang"  # never answer
    SLOW = "slow"  # the normal answer, after `slow_delay` seconds
    HUGE_LENGTH = "huge_length"  # a Content-Length of 5000 digits
    GZIP = "gzip"  # the normal answer gzip-encoded, though the client asked for identity
    TRUNCATED = "truncated"  # half the body promised by Content-Length, then the connection is cut
    UNKNOWN_RESULT = "unknown_result"  # Result 999


# Fixed GUIDs so the demo can show every outcome without any configuration.
DEMO_DEVICES: dict[str, str] = {
    "a64b2e58-9305-4a01-9c51-092205123945": Behaviour.OK,
    "de000000-0000-4000-8000-000000000001": Behaviour.BUSY,
    "de000000-0000-4000-8000-000000000002": Behaviour.OFFLINE,
    "de000000-0000-4000-8000-000000000003": Behaviour.NOT_SUPPORTED,
    "de000000-0000-4000-8000-000000000004": Behaviour.SEND_FAILED,
    "de000000-0000-4000-8000-000000000005": Behaviour.TIMEOUT,
    "de000000-0000-4000-8000-000000000006": Behaviour.EXCEPTION,
    "de000000-0000-4000-8000-000000000007": Behaviour.DEVICE_ERROR,
    "de000000-0000-4000-8000-000000000008": Behaviour.BAD_REQUEST,
    "de000000-0000-4000-8000-000000000009": Behaviour.TOKEN_ERROR,
}

# Behaviours that end in a plain error reply: Result code and Message.
_ERROR_RESULTS: Final[dict[str, tuple[int, str]]] = {
    Behaviour.OFFLINE: (111, "device offline"),
    Behaviour.NOT_SUPPORTED: (131, "instruction not supported by the device"),
    Behaviour.SEND_FAILED: (108, "ins send fail"),
    Behaviour.EXCEPTION: (105, "cloud exception"),
    Behaviour.UNKNOWN: (106, "no such device"),
    Behaviour.TIMEOUT: (138, "device response timeout"),
    Behaviour.BAD_REQUEST: (102, "parameter error"),
    Behaviour.TOKEN_ERROR: (104, "token error"),
}
# Behaviours that end in Result 200: the device's answer (7th field of `response`).
_DEVICE_ANSWERS: Final[dict[str, int]] = {Behaviour.OK: 0, Behaviour.BUSY: 1, Behaviour.DEVICE_ERROR: 2}

_USER_NAMESPACE: Final = uuid.UUID("6f1c0a52-3c8e-4d0e-9a43-6d6f636b636c")

# Pseudo status codes for the faults that are no HTTP reply at all.
_HANG: Final = 0
_RESET: Final = -1
_CLOSE: Final = -2
_HUGE_LENGTH: Final = -3
_TRUNCATED: Final = -4
_RAW_FAULTS: Final[dict[str, int]] = {
    Fault.HANG: _HANG, Fault.RESET: _RESET, Fault.CLOSE: _CLOSE,
    Fault.HUGE_LENGTH: _HUGE_LENGTH, Fault.TRUNCATED: _TRUNCATED,
}

_JSON: Final = "application/json; charset=utf-8"
_TEXT: Final = "text/plain; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"
_GZIP_JSON: Final = "gzip+" + _JSON  # marks a body to be sent gzip-encoded

_REASONS: Final[dict[int, str]] = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_FAULT_STATUS: Final[dict[str, int]] = {
    Fault.HTTP_500: 500, Fault.HTTP_502: 502, Fault.HTTP_503: 503, Fault.HTTP_504: 504, Fault.HTTP_429: 429,
}
# Real servers close idle keep-alive connections (Apache after 5 s, nginx after 75 s);
# the short end makes every benchmark and test meet server-closed pooled connections.
IDLE_TIMEOUT: Final = 5.0

# (status, content type, body, delay in seconds); status may be one of the pseudo codes above.
_Reply = tuple[int, str, bytes, float]


@dataclass
class RecordedRequest:
    """One request as the server received it (body is None unless it was a JSON object)."""

    path: str
    body: dict[str, Any] | None
    at: float


@functools.lru_cache(maxsize=256)
def _result_payload(result: int, message: str) -> bytes:
    """An error reply body; cached because the same few are sent over and over."""
    return json.dumps({"Result": result, "Message": message, "FObject": []}).encode()


@functools.lru_cache(maxsize=65536)
def _terminal_of(guid: str) -> tuple[str, str]:
    """(terminalNum, terminalStrId) for a GUID: stable across runs so tests and demos can predict them."""
    digest = hashlib.sha256(guid.encode()).digest()
    number = int.from_bytes(digest[:8], "big") % 10**12
    return f"{number:012d}", str(uuid.UUID(bytes=digest[8:24], version=4))


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON or not an object."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None
    return cast(dict[str, Any], value) if isinstance(value, dict) else None


def _photo_params_error(params: object) -> str | None:
    """Why FT_GpActiveNewPhotograph breaks the vendor's rules, or None when it is valid."""
    if not isinstance(params, dict):
        return f"{PARAMS_KEY} is required and must be an object"
    camera = params.get("FCameraID")
    if not isinstance(camera, str) or camera not in ("0", "1"):
        return 'FCameraID must be "0" or "1"'
    values: dict[str, int] = {}
    for name in ("FType", "FCount", "FDuration", "FResolution", "FInterval"):
        value = params.get(name)
        # bool is an int subclass; the cloud would not accept true/false either.
        if type(value) is not int:
            return f"{name} must be an integer"
        values[name] = value
    ftype = values["FType"]
    if ftype not in (1, 2, 3):
        return "FType must be 1, 2 or 3"
    photo, video = ftype in (1, 3), ftype in (2, 3)
    if photo and values["FCount"] < 1:
        return "FCount must be >= 1 for FType 1 and 3"
    if not photo and values["FCount"] != 0:
        return "FCount must be 0 for FType 2"
    if video and values["FDuration"] < 1:
        return "FDuration must be >= 1 for FType 2 and 3"
    if not video and values["FDuration"] != 0:
        return "FDuration must be 0 for FType 1"
    if not 0 <= values["FResolution"] <= 3:
        return "FResolution must be 0-3"
    if values["FInterval"] < 0:
        return "FInterval must be >= 0"
    return None


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting the connections it accepts."""

    def __init__(self, cloud: MockCloud, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cloud = cloud

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        self._cloud.connections_accepted += 1
        super().connection_made(handler, transport)


class MockCloud:
    """The simulated cloud. Tests may change the public attributes between requests."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        users: dict[str, str] | None = None,
        devices: dict[str, Behaviour | str] | None = None,
        default_behaviour: Behaviour | str = Behaviour.UNKNOWN,
        fixed_tokens: Iterable[str] = (),
        timeout_delay: float = 15.0,
        record: bool = True,
        base_path: str = "/OpenApi",
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.base_path = base_path.rstrip("/")
        # Runtime knobs: read by the server loop on every request, so changes apply to the next one.
        self.latency = latency
        self.users: dict[str, str] = dict(users) if users is not None else {DEMO_USER: DEMO_PASSWORD}
        self.devices: dict[str, Behaviour | str] = (
            dict(devices) if devices is not None else dict(DEMO_DEVICES)
        )
        for behaviour in self.devices.values():
            Behaviour(behaviour)  # fail at construction, not on the first request
        self.default_behaviour = default_behaviour
        self.timeout_delay = timeout_delay
        self.fault = Fault.NONE
        self.fault_count: int | None = None
        self.fault_login = False
        # Faults for one device's Instructions (by FAssetGUID), applied when no global `fault` is.
        self.device_faults: dict[str, Fault | str] = {}
        self.retry_after: float | None = 1.0  # Retry-After of a 503/429 fault; None sends none
        self.slow_delay = 5.0  # seconds before a SLOW fault's answer
        self.account_expired: set[str] = set()
        self.record = record
        # Observations.
        self.requests: list[RecordedRequest] = []
        self.login_count = 0
        self.instruction_count = 0
        self.connections_accepted = 0
        self.max_concurrent = 0
        # Internals.
        self._fixed_tokens = tuple(fixed_tokens)
        self._tokens: set[str] = set(self._fixed_tokens)
        self.issued_tokens: list[str] = []
        # open_access: any user logs in and any token not expired by expire_tokens() is accepted
        # (the CLI default, so a real config works against the simulator unchanged).
        self.open_access = False
        self._expired: set[str] = set()
        self._login_path = self.base_path + "/login"
        self._instruction_path = self.base_path + "/Instruction"
        self._file_counter = 0
        self._inflight = 0
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(str(tls_cert), str(tls_key) if tls_key is not None else None)
        self.idle_timeout = idle_timeout
        self._runner: web.ServerRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: asyncio.Event | None = None

    # -- runtime knobs that need normalising ------------------------------------------------------
    @property
    def default_behaviour(self) -> Behaviour:
        """Behaviour of a GUID not in `devices`."""
        return self._default_behaviour

    @default_behaviour.setter
    def default_behaviour(self, value: Behaviour | str) -> None:
        self._default_behaviour = Behaviour(value)

    @property
    def fault(self) -> Fault:
        """The fault applied to Instruction requests (and login when `fault_login`)."""
        return self._fault

    @fault.setter
    def fault(self, value: Fault | str) -> None:
        self._fault = Fault(value)

    @property
    def open_connections(self) -> int:
        """Client connections open right now (idle keep-alive ones included)."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. http://127.0.0.1:8092/OpenApi (valid once listening)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._ssl else 'http'}://{host}:{self.port}{self.base_path}"

    # -- test helpers ---------------------------------------------------------------------------
    def expire_tokens(self) -> None:
        """Make every token issued so far, fixed ones included, answer 104."""
        self._expired = self._expired | self._tokens | set(self.issued_tokens)
        self._tokens = set()  # a new set rather than clear(): the loop thread may be iterating/adding

    def instructions_for(self, guid: str) -> list[dict[str, Any]]:
        """Recorded Instruction bodies addressed to `guid`, oldest first."""
        return [
            r.body
            for r in list(self.requests)
            if r.path == self._instruction_path and r.body is not None and r.body.get("FAssetGUID") == guid
        ]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        """Serve on a private event loop in a daemon thread; return once listening."""
        if self._thread is not None:
            raise RuntimeError("MockCloud already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve_until_stopped(ready))
            except BaseException as exc:  # the starting thread re-raises it
                failure.append(exc)
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="mock-cloud", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop the thread started by `start()`, dropping open connections."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        """Serve in the current event loop until cancelled; `ready` is set once listening."""
        await self._open()
        if ready is not None:
            ready.set()
        try:
            await asyncio.Future()  # forever; cancellation is the way out
        finally:
            await self._close()

    async def _serve_until_stopped(self, ready: threading.Event) -> None:
        self._stop_event = asyncio.Event()
        await self._open()
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._close()

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        # aiohttp.web's low-level server: one handler for every path, no router or middlewares to pay for.
        server = _CountingServer(
            self,
            self._handle,
            access_log=None,  # the benchmark sends thousands of requests a second
            keepalive_timeout=self.idle_timeout,
        )
        # A hung request must not hold stop() for aiohttp's default minute.
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        # A deep backlog: the benchmark opens thousands of connections at once.
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl, backlog=4096, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("mock cloud listening on %s", self.url)

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- the HTTP layer ---------------------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self._inflight += 1
        self.max_concurrent = max(self.max_concurrent, self._inflight)
        try:
            raw = await request.read()
            status, content_type, payload, delay = self._reply(request.method, request.path, raw)
            if delay > 0:
                await asyncio.sleep(delay)
            if status >= 100:
                return self._response(status, content_type, payload)
            await self._misbehave(request, status, payload)
            # The connection is gone: aiohttp's write of this placeholder fails quietly.
            return web.Response()
        finally:
            self._inflight -= 1

    def _response(self, status: int, content_type: str, payload: bytes) -> web.Response:
        headers = {"Content-Type": content_type, "Server": "capture-bridge-mockcloud"}
        if status == 405:
            headers["Allow"] = "POST"
        if status in (429, 503) and self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        if content_type == _GZIP_JSON:
            headers["Content-Type"] = _JSON
            headers["Content-Encoding"] = "gzip"
            payload = gzip.compress(payload)
        return web.Response(status=status, body=payload, headers=headers)

    async def _misbehave(self, request: web.BaseRequest, fault: int, payload: bytes) -> None:
        """The faults no HTTP reply can express, done on the connection itself."""
        transport = request.transport
        if transport is None:
            return
        if fault == _HANG:
            await asyncio.Future()  # until the client gives up or the server stops
        elif fault == _RESET:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        elif fault == _CLOSE:
            transport.close()
        elif fault == _HUGE_LENGTH:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                            + b"9" * 5000 + b"\r\n\r\n" + payload)
            transport.close()
        elif fault == _TRUNCATED:
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {_JSON}\r\nContent-Length: {len(payload)}\r\n\r\n"
            transport.write(head.encode() + payload[: len(payload) // 2])
            # Cut without a TLS close_notify: the client must not take half a body for a whole one.
            await asyncio.sleep(0.05)  # ok: lets the half body leave before the cut
            transport.abort()

    # -- the API --------------------------------------------------------------------------------
    def _reply(self, method: str, path: str, raw: bytes) -> _Reply:
        """Decide the answer to one request. Runs on the server loop; must never block."""
        body = _json_object(raw)
        if self.record:
            self.requests.append(RecordedRequest(path, body, time.monotonic()))
        is_instruction = path == self._instruction_path
        if not is_instruction and path != self._login_path:
            return 404, _TEXT, b"not found", 0.0
        if method != "POST":
            return 405, _TEXT, b"method not allowed", 0.0
        if is_instruction:
            self.instruction_count += 1
            fault = self._take_fault()
            if fault is Fault.NONE and body is not None and self.device_faults:
                fault = Fault(self.device_faults.get(str(body.get("FAssetGUID")), Fault.NONE))
            if fault is not Fault.NONE:
                return self._fault_reply(fault, login=False, body=body)
            return self._instruction(body)
        self.login_count += 1
        if self.fault_login:
            fault = self._take_fault()
            if fault is not Fault.NONE:
                return self._fault_reply(fault, login=True, body=body)
        return self._login(body)

    def _take_fault(self) -> Fault:
        """The fault for this request, counting down `fault_count`."""
        fault = self._fault
        if fault is Fault.NONE:
            return fault
        count = self.fault_count
        if count is not None:
            if count <= 1:
                self._fault = Fault.NONE
                self.fault_count = None
            else:
                self.fault_count = count - 1
            if count <= 0:
                return Fault.NONE
        return fault

    def _fault_reply(self, fault: Fault, *, login: bool, body: dict[str, Any] | None = None) -> _Reply:
        delay = 0.0 if login else self.latency
        if fault in (Fault.RESET, Fault.CLOSE, Fault.HANG):
            return _RAW_FAULTS[fault], "", b"", 0.0
        if fault in (Fault.SLOW, Fault.GZIP, Fault.HUGE_LENGTH, Fault.TRUNCATED):
            status, content_type, payload, _ = self._login(body) if login else self._instruction(body)
            if fault is Fault.SLOW:
                return status, content_type, payload, max(delay, self.slow_delay)
            if fault is Fault.GZIP:
                return status, _GZIP_JSON, payload, delay
            return _RAW_FAULTS[fault], content_type, payload, delay
        if fault in _FAULT_STATUS:
            status = _FAULT_STATUS[fault]
            return status, _TEXT, f"{status} {_REASONS[status]}".encode(), delay
        if fault is Fault.NOT_JSON:
            return 200, _HTML, b"<html>oops", delay
        if fault is Fault.MISSING_FIELDS:
            return 200, _JSON, b'{"Result": 200}', delay
        if fault is Fault.UNKNOWN_RESULT:
            return 200, _JSON, _result_payload(999, "unknown error"), delay
        # BAD_RESPONSE: well-formed JSON whose content cannot be used.
        if login:
            return (
                200,
                _JSON,
                json.dumps({"Result": 200, "Message": "success", "FObject": []}).encode(),
                delay,
            )
        return 200, _JSON, self._success_payload("00000000-0000-0000-0000-000000000000", "garbage"), delay

    def _login(self, body: dict[str, Any] | None) -> _Reply:
        user = body.get("FUserName") if body is not None else None
        password_md5 = body.get("FPassword") if body is not None else None
        if not isinstance(user, str) or not user or not isinstance(password_md5, str) or not password_md5:
            return 200, _JSON, _result_payload(102, "FUserName and FPassword are required"), 0.0
        password = self.users.get(user)
        if self.open_access and password is None:
            password = user  # any account logs in: see `open_access`
            password_md5 = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
        expected = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest() if password else ""
        if not password or not hmac.compare_digest(expected, password_md5.lower()):
            return 200, _JSON, _result_payload(103, "user name or password error"), 0.0
        if user in self.account_expired:
            return 200, _JSON, _result_payload(106, "account expired"), 0.0
        token = secrets.token_hex(16)
        self._tokens.add(token)
        self.issued_tokens.append(token)
        expires = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%S")
        account = {
            "FUserName": user,
            "FUserGUID": str(uuid.uuid5(_USER_NAMESPACE, user)),
            "FTokenID": token,
            "FExpireTime": expires,
        }
        return (
            200,
            _JSON,
            json.dumps({"Result": 200, "Message": "success", "FObject": [account]}).encode(),
            0.0,
        )

    def _instruction(self, body: dict[str, Any] | None) -> _Reply:
        latency = self.latency
        if body is None:
            return 200, _JSON, _result_payload(102, "request body must be a JSON object"), latency
        token = body.get("FTokenID")
        if not isinstance(token, str) or not token:
            return 200, _JSON, _result_payload(102, "FTokenID is required"), latency
        if token not in self._tokens and not (self.open_access and token not in self._expired):
            return 200, _JSON, _result_payload(104, "token error"), latency
        if body.get("FAction") != ACTION:
            return 200, _JSON, _result_payload(102, "Action is error"), latency
        guid = body.get("FAssetGUID")
        if not isinstance(guid, str) or not guid:
            return 200, _JSON, _result_payload(102, "FAssetGUID is required"), latency
        problem = _photo_params_error(body.get(PARAMS_KEY))
        if problem is None and "FTimeDifferent" in body and type(body["FTimeDifferent"]) is not int:
            problem = "FTimeDifferent must be an integer"
        if problem is None and "FLanguage" in body and not isinstance(body["FLanguage"], str):
            problem = "FLanguage must be a string"
        if problem is not None:
            return 200, _JSON, _result_payload(102, problem), latency

        behaviour = self.devices.get(guid, self._default_behaviour)
        answer = _DEVICE_ANSWERS.get(behaviour)
        if answer is not None:
            terminal = _terminal_of(guid)[0]
            if answer == 0:
                self._file_counter += 1
                file_id = f"{terminal}_{self._file_counter}"
            else:
                file_id = "0"  # busy/error replies still carry all 8 fields
            response = f"({terminal},1,001,CAMERA,9,4,{answer},{file_id})"
            return 200, _JSON, self._success_payload(guid, response), latency
        if behaviour == Behaviour.TIMEOUT:
            # The cloud waited for the device for timeout_delay; latency is already inside that wait.
            return 200, _JSON, _result_payload(*_ERROR_RESULTS[behaviour]), max(latency, self.timeout_delay)
        if behaviour in _ERROR_RESULTS:
            return 200, _JSON, _result_payload(*_ERROR_RESULTS[behaviour]), latency
        # Someone put a typo into `devices` at runtime: say so instead of crashing the connection.
        return 200, _JSON, _result_payload(105, f"mock cloud: unknown behaviour {behaviour!r}"), latency

    @staticmethod
    def _success_payload(guid: str, response: str) -> bytes:
        terminal, terminal_id = _terminal_of(guid)
        now = time.time()
        reply = {
            "Result": 200,
            "Message": "ins send ok",
            "FObject": {
                "terminalStrId": terminal_id,
                "terminalNum": terminal,
                "dateTime": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "dateTimestamp": int(now * 1000),
                "response": response,
            },
        }
        return json.dumps(reply).encode()


async def _run_until_signal(cloud: MockCloud) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread / Windows
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    await cloud._open()
    try:
        print(
            f"mock-cloud listening on {cloud.url} "
            + ("(any user and token accepted)" if cloud.open_access else f"(user {DEMO_USER} / {DEMO_PASSWORD})"),
            flush=True,
        )
        await stop.wait()
    finally:
        await cloud._close()
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_mock_cloud(
    host: str,
    port: int,
    latency: float,
    default_behaviour: str,
    token: str | None,
    strict: bool = False,
    *,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    """Blocking entry point of `capture-bridge mock-cloud`: serve until SIGINT/SIGTERM.

    Unless `strict`, any user name/password logs in and any token is accepted, so a bridge
    configured for the real cloud can be pointed at the simulator as it is. Runs on uvloop
    when it is installed (about twice the requests per CPU second). OSError (port taken,
    unreadable certificate) is left to the caller.
    """
    cloud = MockCloud(
        host=host,
        port=port,
        latency=latency,
        default_behaviour=default_behaviour,
        fixed_tokens=(token,) if token else (),
        # A long-running simulator must not keep every request body it ever saw.
        record=False,
        tls_cert=tls_cert,
        tls_key=tls_key,
        idle_timeout=idle_timeout,
    )
    cloud.open_access = not strict
    with contextlib.suppress(KeyboardInterrupt):  # only reached where signal handlers are unavailable
        try:
            import uvloop
        except ImportError:
            asyncio.run(_run_until_signal(cloud))
        else:
            uvloop.run(_run_until_signal(cloud))
