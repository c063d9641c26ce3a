"""A local simulator of the vendor cloud API (`/OpenApi/login`, `/OpenApi/Instruction`).

It serves three masters, which is why it looks the way it does:

* the demo (`capture-bridge mock-cloud --port N` -> `run_mock_cloud`),
* the integration tests, which need a *real* HTTP server whose behaviour they can
  change between requests (per-device `Behaviour`, transport-level `Fault`),
* the throughput benchmark, which holds 1000-10000 requests open at once for a
  configurable latency.

The last one rules out `http.server` (a thread per connection) and even a coroutine
per request: the server is one `asyncio.Protocol` per connection with a tiny
HTTP/1.1 parser (keep-alive, pipelining, Content-Length bodies), and a delayed
answer is a single `loop.call_later` timer. Only the stdlib is used.

Result codes and reply shapes follow the vendor's documentation (see SPEC.md).
Nothing here logs passwords or tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import secrets
import signal
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Self, cast

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
    HTTP_503 = "http_503"
    HTTP_429 = "http_429"
    NOT_JSON = "not_json"  # 200 with an HTML body
    MISSING_FIELDS = "missing_fields"  # 200 {"Result": 200}, no FObject
    BAD_RESPONSE = "bad_response"  # 200, Result 200, unparseable `response` string
    RESET = "reset"  # TCP RST after the request was read
    HANG = "hang"  # never answer
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

# Parser limits: generous for the API's tiny bodies, small enough that a broken
# client cannot make the benchmark server balloon.
_MAX_HEAD: Final = 16 * 1024
_MAX_BODY: Final = 1024 * 1024
_MAX_PIPELINE: Final = 64

# Pseudo status codes for "answer nothing" and "reset the connection".
_HANG: Final = 0
_RESET: Final = -1

_JSON: Final = "application/json; charset=utf-8"
_TEXT: Final = "text/plain; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"

_REASONS: Final[dict[int, str]] = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_EXTRA_HEADERS: Final[dict[int, str]] = {
    405: "Allow: POST\r\n",
    429: "Retry-After: 1\r\n",
    503: "Retry-After: 1\r\n",
}
_FAULT_STATUS: Final[dict[str, int]] = {Fault.HTTP_500: 500, Fault.HTTP_503: 503, Fault.HTTP_429: 429}

# (status, content type, body, delay in seconds); status may be _HANG or _RESET.
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


def _render(
    status: int, content_type: str, body: bytes, *, keep_alive: bool, head_only: bool = False
) -> bytes:
    """A complete HTTP/1.1 response."""
    connection = "" if keep_alive else "Connection: close\r\n"
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Server: capture-bridge-mockcloud\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{_EXTRA_HEADERS.get(status, '')}{connection}\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


class _Head:
    """A parsed request line + headers, waiting for its body."""

    __slots__ = ("continued", "expect_continue", "keep_alive", "length", "method", "path")

    def __init__(self, method: str, path: str, length: int, keep_alive: bool, expect_continue: bool) -> None:
        self.method = method
        self.path = path
        self.length = length
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.continued = False


class _Slot:
    """One response in a connection's pipeline; written once it and all before it are ready."""

    __slots__ = ("close", "data", "timer")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, asks the cloud for replies, writes them in order."""

    def __init__(self, cloud: MockCloud) -> None:
        self._cloud = cloud
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._head: _Head | None = None
        self._pending: deque[_Slot] = deque()
        self._stop_parsing = False  # after `Connection: close`, a parse error, EOF or a reset
        self._paused = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._cloud._connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_parsing = True
        for slot in self._pending:
            if slot.timer is not None:
                slot.timer.cancel()
        self._cloud._inflight -= len(self._pending)
        self._pending.clear()
        self._cloud._connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._stop_parsing:
            return
        self._buf += data
        self._process()

    def eof_received(self) -> bool | None:
        self._stop_parsing = True
        if not self._pending:
            return None  # nothing owed: let asyncio close the transport
        # Half-closed client still waiting for answers: send them, then close.
        self._pending[-1].close = True
        return True

    # -- parsing ----------------------------------------------------------------------------
    def _process(self) -> None:
        buf = self._buf
        while not self._stop_parsing and not self._paused:
            head = self._head
            if head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        self._reject(431, "request header too large")
                    return
                head = self._parse_head(bytes(buf[:end]))
                del buf[: end + 4]
                if head is None:
                    return
                self._head = head
            if len(buf) < head.length:
                if head.expect_continue and not head.continued:
                    head.continued = True
                    self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return
            body = bytes(buf[: head.length])
            del buf[: head.length]
            self._head = None
            if not head.keep_alive:
                self._stop_parsing = True
            self._handle(head, body)
            if len(self._pending) >= _MAX_PIPELINE and self._transport is not None:
                # Back-pressure on a client that pipelines far ahead of a slow (or hung) reply.
                self._paused = True
                self._transport.pause_reading()

    def _parse_head(self, raw: bytes) -> _Head | None:
        lines = raw.decode("latin-1").lstrip("\r\n").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            self._reject(400, "malformed request line")
            return None
        method, target, version = parts
        keep_alive = version == "HTTP/1.1"
        length: int | None = None
        expect_continue = False
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._reject(400, "malformed header line")
                return None
            name = name.strip().lower()
            if name == "content-length":
                value = value.strip()
                if not (value.isascii() and value.isdigit()) or (length is not None and int(value) != length):
                    self._reject(400, "bad Content-Length")
                    return None
                length = int(value)
            elif name == "transfer-encoding":
                self._reject(400, "chunked request bodies are not supported; send Content-Length")
                return None
            elif name == "connection":
                tokens = value.lower()
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
            elif name == "expect":
                expect_continue = value.strip().lower() == "100-continue"
        if length is not None and length > _MAX_BODY:
            self._reject(413, "request body too large")
            return None
        return _Head(method, target.split("?", 1)[0], length or 0, keep_alive, expect_continue)

    # -- replying ---------------------------------------------------------------------------
    def _handle(self, head: _Head, body: bytes) -> None:
        status, content_type, payload, delay = self._cloud._reply(head.method, head.path, body)
        if status == _RESET:
            self._reset()
            return
        slot = self._enqueue()
        if status == _HANG:
            return  # the slot stays unfilled: this and every later reply on the connection wait forever
        data = _render(
            status, content_type, payload, keep_alive=head.keep_alive, head_only=head.method == "HEAD"
        )
        if delay > 0:
            slot.timer = self._loop.call_later(delay, self._fill, slot, data, not head.keep_alive)
        else:
            self._fill(slot, data, not head.keep_alive)

    def _reject(self, status: int, message: str) -> None:
        """Answer a request we could not parse, then close: the byte stream can no longer be trusted."""
        self._stop_parsing = True
        self._fill(self._enqueue(), _render(status, _TEXT, message.encode(), keep_alive=False), True)

    def _enqueue(self) -> _Slot:
        slot = _Slot()
        self._pending.append(slot)
        cloud = self._cloud
        cloud._inflight += 1
        cloud.max_concurrent = max(cloud.max_concurrent, cloud._inflight)
        return slot

    def _fill(self, slot: _Slot, data: bytes, close: bool) -> None:
        slot.data = data
        slot.close = slot.close or close
        slot.timer = None
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        transport = self._transport
        if transport is None:
            return
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            self._cloud._inflight -= 1
            transport.write(cast(bytes, slot.data))
            if slot.close:
                self._stop_parsing = True
                transport.close()  # flushes what was written, then closes
                return
        if self._paused and len(pending) < _MAX_PIPELINE // 2:
            self._paused = False
            transport.resume_reading()
            self._process()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def _reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0), the way a crashing proxy would."""
        self._stop_parsing = True
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def abort(self) -> None:
        """Drop the connection (server shutdown)."""
        if self._transport is not None:
            self._transport.abort()


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
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
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
    def url(self) -> str:
        """Base URL for clients, e.g. http://127.0.0.1:8092/OpenApi (valid once listening)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self.base_path}"

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
        loop = asyncio.get_running_loop()
        self._loop = loop
        # A deep backlog: the benchmark opens thousands of connections at once.
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mock cloud listening on %s", self.url)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Server.close() leaves accepted connections open (before 3.13); a hung request would pin one.
        for connection in list(self._connections):
            connection.abort()
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)  # let the connection_lost callbacks run before the loop goes away

    def _connection_opened(self, connection: _Connection) -> None:
        self.connections_accepted += 1
        self._connections.add(connection)

    def _connection_closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)

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
            if fault is not Fault.NONE:
                return self._fault_reply(fault, login=False)
            return self._instruction(body)
        self.login_count += 1
        if self.fault_login:
            fault = self._take_fault()
            if fault is not Fault.NONE:
                return self._fault_reply(fault, login=True)
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

    def _fault_reply(self, fault: Fault, *, login: bool) -> _Reply:
        delay = 0.0 if login else self.latency
        if fault is Fault.RESET:
            return _RESET, "", b"", 0.0
        if fault is Fault.HANG:
            return _HANG, "", b"", 0.0
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
            f"mock-cloud listening on http://{cloud.host}:{cloud.port}{cloud.base_path} "
            + ("(any user and token accepted)" if cloud.open_access else f"(user {DEMO_USER} / {DEMO_PASSWORD})"),
            flush=True,
        )
        await stop.wait()
    finally:
        await cloud._close()
        for sig in installed:
            loop.remove_signal_handler(sig)


def run_mock_cloud(
    host: str, port: int, latency: float, default_behaviour: str, token: str | None, strict: bool = False
) -> None:
    """Blocking entry point of `capture-bridge mock-cloud`: serve until SIGINT/SIGTERM.

    Unless `strict`, any user name/password logs in and any token is accepted, so a bridge
    configured for the real cloud can be pointed at the simulator as it is.
    """
    cloud = MockCloud(
        host=host,
        port=port,
        latency=latency,
        default_behaviour=default_behaviour,
        fixed_tokens=(token,) if token else (),
        # A long-running simulator must not keep every request body it ever saw.
        record=False,
    )
    cloud.open_access = not strict
    with contextlib.suppress(KeyboardInterrupt):  # only reached where signal handlers are unavailable
        asyncio.run(_run_until_signal(cloud))
