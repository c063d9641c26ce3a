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
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bridge.config import CloudConfig
from bridge.core.errors import BridgeError, CloudError, ErrorCode
from bridge.core.redact import redact
from bridge.core.reply import (
    INSTRUCTION_PATH,
    LOGIN_PATH,
    OUTCOME_UNKNOWN,
    RESULT_DEVICE_TIMEOUT,
    RESULT_TOKEN,
    RETRY_LATER_STATUSES,
    InstructionReply,
    instruction_body,
    login_body,
    md5_hex,
    parse_instruction_reply,
    parse_login_reply,
)
from bridge.infra.transport import HttpReply, TransportError

log = logging.getLogger("bridge.cloud")

class Transport(Protocol):
    """What the cloud client needs from HTTP: POST a JSON body, get status and body back."""

    async def post_json(self, path: str, body: bytes) -> HttpReply: ...



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


class LoginCheck:
    """Wrong credentials are found at start, not at the first capture.

    A failure is one ERROR; the login is tried again in the background (and by every capture)
    until it works. `status` is what /healthz shows.
    """

    def __init__(self, cloud: CloudClient, config: CloudConfig) -> None:
        self._cloud = cloud
        self._config = config
        self.status = "not checked yet"

    async def run(self) -> None:
        """Log in once, retrying with backoff until it works (a fixed token is not checked)."""
        config = self._config
        if config.token is not None or not self._cloud.can_login:
            # A fixed token is used as it is (there is no call to check it without a capture).
            self.status = "fixed token (checked by the first capture)"
            return
        retry, said = 60.0, False
        while True:
            try:
                await self._cloud.fresh_token(None)
            except BridgeError as exc:
                self.status = f"{exc.code.value}: {exc}"
                if not said:
                    said = True
                    hint = "check cloud.username and cloud.password" if exc.code is ErrorCode.LOGIN_FAILED \
                        else "check cloud.base_url"
                    log.error("cloud login as %s failed: %s (%s); still running, trying again in %.0fs",
                              config.username, exc, hint, retry)
            else:
                self.status = f"login ok as {config.username}"
                return
            await asyncio.sleep(retry)
            retry = min(retry * 2, 900.0)
