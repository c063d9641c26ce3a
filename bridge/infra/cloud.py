"""The vendor cloud: request bodies and reply parsing (pure), and `CloudClient`.

`CloudClient` owns the token: it logs in when it has none, shares one re-login
among every call that met a 104 at the same time, and maps every failure to a
`CloudError` carrying one of the names in `ErrorCode`. It speaks to the network
only through a `Transport` (see `bridge.transport`).

Retries never fire a capture twice. An Instruction is sent again only when it
certainly did not reach the cloud (name resolution, refused connection, TLS
handshake, a pooled connection found closed before the request was written) or
when the cloud answered 503 or 429 (waiting its Retry-After). After any byte of
it went out (reset, closed without a reply, read timeout, HTTP 500/502/504,
Result 138) it is never repeated, and the error says the cloud may have it.
Login, which fires nothing, is retried on any transient failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.config import CloudConfig
from bridge.core.errors import RESULT_ERRORS, CloudError, ErrorCode
from bridge.infra.logs import redact
from bridge.infra.transport import HttpReply, TransportError

log = logging.getLogger("bridge.cloud")

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


class Transport(Protocol):
    """What the cloud client needs from HTTP: POST a JSON body, get status and body back."""

    async def post_json(self, path: str, body: bytes) -> HttpReply: ...


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
        result = int(result)
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


# --- the client -------------------------------------------------------------


def _transport_error(exc: TransportError) -> CloudError:
    code = ErrorCode.BAD_CLOUD_REPLY if exc.bad_reply else ErrorCode.CLOUD_UNREACHABLE
    prefix = "bad cloud reply" if exc.bad_reply else "cloud unreachable"
    return CloudError(code, f"{prefix}: {exc.message}", retryable=exc.retryable, sent=exc.sent)


def _check_status(reply: HttpReply) -> None:
    if 200 <= reply.status < 300:
        return
    if reply.status in RETRY_LATER_STATUSES:
        # "Not now": the server did not act on the request, so even an Instruction may be sent again.
        raise CloudError(ErrorCode.CLOUD_UNREACHABLE, f"cloud answered HTTP {reply.status}",
                         retryable=True, sent=False, retry_after=reply.retry_after)
    # A 5xx from a gateway or the cloud itself may come after the cloud acted on the request;
    # a 4xx is a refusal (never retried either).
    hint = " (check cloud.base_url)" if reply.status == 404 else ""
    raise CloudError(ErrorCode.CLOUD_UNREACHABLE, f"cloud answered HTTP {reply.status}{hint}",
                     retryable=reply.status >= 500, sent=reply.status >= 500)


def may_resend_instruction(exc: CloudError) -> bool:
    """Whether an Instruction that failed with `exc` may be sent again: only if it certainly did not act."""
    return exc.retryable and not exc.sent and exc.result != RESULT_DEVICE_TIMEOUT


def outcome_unknown(exc: CloudError) -> bool:
    """Whether the failed Instruction may still have reached the device."""
    if exc.result == RESULT_DEVICE_TIMEOUT:
        return True
    return exc.sent and exc.result is None and exc.code in (ErrorCode.CLOUD_UNREACHABLE, ErrorCode.BAD_CLOUD_REPLY)


class CloudClient:
    """Calls ActiveNewPhotograph with a cached token, one shared re-login, and retries."""

    def __init__(
        self,
        transport: Transport,
        config: CloudConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._transport = transport
        self._config = config
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._token: str | None = config.token.get_secret_value() if config.token else None
        if self._token:
            redact.add(self._token)
        if config.password is not None:
            redact.add(config.password.get_secret_value())
            redact.add(md5_hex(config.password.get_secret_value()))
        self._login: asyncio.Future[str] | None = None
        self.login_count = 0

    @property
    def can_login(self) -> bool:
        """Whether credentials to log in are configured."""
        return self._config.username is not None and self._config.password is not None

    async def _post(self, path: str, body: bytes) -> HttpReply:
        try:
            reply = await self._transport.post_json(path, body)
        except TransportError as exc:
            raise _transport_error(exc) from None
        _check_status(reply)
        return reply

    async def _do_login(self) -> str:
        assert self._config.username is not None
        assert self._config.password is not None
        self.login_count += 1
        body = login_body(self._config.username, self._config.password.get_secret_value())
        try:
            reply = await self._login_with_retries(body)
        except CloudError as exc:
            # It sent no Instruction, and it had its own tries: the capture does not try it again.
            exc.sent = False
            exc.retryable = False
            raise
        token = parse_login_reply(reply.body)
        redact.add(token)
        log.info("cloud login ok as %s", self._config.username)
        return token

    async def _login_with_retries(self, body: bytes) -> HttpReply:
        # Logging in fires nothing, so any transient failure is worth another try, even after sending.
        deadline = self._clock() + self._config.retry_deadline
        tries = 0
        while True:
            tries += 1
            try:
                return await self._post(LOGIN_PATH, body)
            except CloudError as exc:
                delay = self._delay(tries, exc)
                if not exc.retryable or tries >= self._config.retry_attempts or self._clock() + delay >= deadline:
                    if tries > 1:
                        exc.message = f"{exc.message} (after {tries} tries)"
                        exc.args = (exc.message,)
                    raise
                log.warning("login failed (%s), try %d again in %.2fs", exc.message, tries + 1, delay)
                await self._sleep(delay)

    def _delay(self, tries: int, exc: CloudError) -> float:
        backoff = min(self._config.retry_backoff_max, self._config.retry_backoff * 2.0 ** (tries - 1))
        backoff *= 0.5 + self._jitter() / 2
        # The server said when to come back: honour it (the deadline caps it).
        return max(backoff, exc.retry_after) if exc.retry_after is not None else backoff

    async def fresh_token(self, stale: str | None) -> str:
        """Log in, unless another call already replaced `stale`; concurrent callers share one login."""
        if self._token is not None and self._token != stale:
            return self._token
        if not self.can_login:
            raise CloudError(
                ErrorCode.TOKEN_INVALID,
                "cloud token rejected (Result 104) and no username/password to log in",
                result=RESULT_TOKEN,
            )
        if self._login is None:
            self._login = asyncio.ensure_future(self._do_login())
            self._login.add_done_callback(self._login_finished)
        return await asyncio.shield(self._login)

    def _login_finished(self, future: asyncio.Future[str]) -> None:
        self._login = None
        if not future.cancelled() and future.exception() is None:
            self._token = future.result()

    async def _attempt(self, guid: str, params: dict[str, Any]) -> InstructionReply:
        token = self._token or await self.fresh_token(None)
        for relogged in (False, True):
            body = instruction_body(token, guid, params, self._config.time_difference, self._config.language)
            reply = await self._post(INSTRUCTION_PATH, body)
            try:
                return parse_instruction_reply(reply.body)
            except CloudError as exc:
                if exc.result != RESULT_TOKEN or relogged:
                    raise
                token = await self.fresh_token(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def capture(self, guid: str, params: dict[str, Any]) -> InstructionReply:
        """Send ActiveNewPhotograph to one asset; return the 200 reply or raise CloudError."""
        deadline = self._clock() + self._config.retry_deadline
        tries = 0
        while True:
            tries += 1
            try:
                reply = await self._attempt(guid, params)
            except CloudError as exc:
                delay = self._delay(tries, exc)
                if (
                    not may_resend_instruction(exc)
                    or tries >= self._config.retry_attempts
                    or self._clock() + delay >= deadline
                ):
                    if outcome_unknown(exc):
                        exc.message = f"{exc.message}; {OUTCOME_UNKNOWN}"
                    if tries > 1:
                        exc.message = f"{exc.message} (after {tries} tries)"
                    exc.args = (exc.message,)
                    raise
                log.warning("cloud call for %s failed (%s), try %d again in %.2fs", guid, exc.message, tries + 1, delay)
                await self._sleep(delay)
                continue
            if tries > 1:
                return InstructionReply(
                    message=f"{reply.message} (after {tries} tries)",
                    terminal_num=reply.terminal_num,
                    reply=reply.reply,
                    device=reply.device,
                    tries=tries,
                )
            return reply
