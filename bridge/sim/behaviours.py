"""The mock cloud's behaviour (pure): how the simulated vendor API answers each request.

`Simulator` decides every reply (status, content type, body, delay) from the request and its
knobs; `server.py` serves it over real HTTP. The rest of this docstring describes both.

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

Result codes and reply shapes follow the vendor's documentation of its OpenApi.
Nothing here logs passwords or tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, cast

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
ERROR_RESULTS: Final[dict[str, tuple[int, str]]] = {
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
DEVICE_ANSWERS: Final[dict[str, int]] = {Behaviour.OK: 0, Behaviour.BUSY: 1, Behaviour.DEVICE_ERROR: 2}

USER_NAMESPACE: Final = uuid.UUID("6f1c0a52-3c8e-4d0e-9a43-6d6f636b636c")

# Pseudo status codes for the faults that are no HTTP reply at all.
RAW_HANG: Final = 0
RAW_RESET: Final = -1
RAW_CLOSE: Final = -2
RAW_HUGE_LENGTH: Final = -3
RAW_TRUNCATED: Final = -4
RAW_FAULTS: Final[dict[str, int]] = {
    Fault.HANG: RAW_HANG, Fault.RESET: RAW_RESET, Fault.CLOSE: RAW_CLOSE,
    Fault.HUGE_LENGTH: RAW_HUGE_LENGTH, Fault.TRUNCATED: RAW_TRUNCATED,
}

CT_JSON: Final = "application/json; charset=utf-8"
CT_TEXT: Final = "text/plain; charset=utf-8"
CT_HTML: Final = "text/html; charset=utf-8"
CT_GZIP_JSON: Final = "gzip+" + CT_JSON  # marks a body to be sent gzip-encoded

REASONS: Final[dict[int, str]] = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
FAULT_STATUS: Final[dict[str, int]] = {
    Fault.HTTP_500: 500, Fault.HTTP_502: 502, Fault.HTTP_503: 503, Fault.HTTP_504: 504, Fault.HTTP_429: 429,
}
# Real servers close idle keep-alive connections (Apache after 5 s, nginx after 75 s);
# the short end makes every benchmark and test meet server-closed pooled connections.
IDLE_TIMEOUT: Final = 5.0

# (status, content type, body, delay in seconds); status may be one of the pseudo codes above.
Reply = tuple[int, str, bytes, float]


@dataclass
class RecordedRequest:
    """One request as the server received it (body is None unless it was a JSON object)."""

    path: str
    body: dict[str, Any] | None
    at: float


@functools.lru_cache(maxsize=256)
def result_payload(result: int, message: str) -> bytes:
    """An error reply body; cached because the same few are sent over and over."""
    return json.dumps({"Result": result, "Message": message, "FObject": []}).encode()


@functools.lru_cache(maxsize=65536)
def terminal_of(guid: str) -> tuple[str, str]:
    """(terminalNum, terminalStrId) for a GUID: stable across runs so tests and demos can predict them."""
    digest = hashlib.sha256(guid.encode()).digest()
    number = int.from_bytes(digest[:8], "big") % 10**12
    return f"{number:012d}", str(uuid.UUID(bytes=digest[8:24], version=4))


def json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON or not an object."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return None
    return cast(dict[str, Any], value) if isinstance(value, dict) else None


def photo_params_error(params: object) -> str | None:
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
