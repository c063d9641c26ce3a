"""The HTTP transport to the vendor cloud, on aiohttp: the only module that knows aiohttp's client.

One `ClientSession` over one `TCPConnector`: a pool sized by `bridge.max_in_flight`,
a DNS cache whose concurrent lookups of one name share a single query, idle
connections closed after `keepalive_timeout` (below the idle limits of common NATs
and load balancers, so a pooled connection is never silently dead when reused),
TCP keepalive on every socket, `HTTPS_PROXY` / `NO_PROXY` from the environment (read once),
verified TLS, explicit connect and read timeouts, `Accept-Encoding: identity` and a
cap on the reply size.

Every aiohttp exception is mapped here, once, to a `TransportError` that says
whether any byte of the request may have reached the server (`sent`): the cloud
client must never repeat an Instruction that did. A trace on the request's
headers tells the two apart; it fires when aiohttp hands the request to the
socket, before the connection is known to be good, so `sent` errs on the side of
"the cloud may have it".
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Final

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

__all__ = ["AiohttpTransport", "HttpReply", "TransportError"]

# The cloud's replies are well under 1 KiB; anything near this is not a sane reply.
MAX_REPLY_BYTES: Final = 1024 * 1024
# Idle pooled connections are closed after this: below the 30-350 s idle limits of common
# NATs and cloud load balancers, so the peer never drops one we are about to reuse.
KEEPALIVE_TIMEOUT: Final = 15.0
# TCP keepalive probes on every connection (Linux defaults wait two hours before the first).
TCP_KEEPIDLE: Final = 30
TCP_KEEPINTVL: Final = 10
TCP_KEEPCNT: Final = 3
DNS_CACHE_TTL: Final = 300
# Before these, asyncio leaks the socket of a TLS connection whose peer never finishes the TLS
# shutdown (cpython#118960); aiohttp then aborts such connections itself, and at close().
_SSL_SHUTDOWN_LEAKS: Final = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)
# aiohttp raises this, before calling transport.write, when the pooled connection is already closing.
_NOT_WRITTEN_MESSAGE: Final = "Cannot write to closing transport"



def _guard_ssl_abort() -> None:
    """Python 3.11 before 3.11.7 (Debian 12 ships 3.11.2): aborting an SSL transport whose connection
    is already lost raises `AttributeError: 'NoneType' object has no attribute '_abort'` from inside
    aiohttp's close. 3.11.7 checks for None first; the same check, for the releases without it."""
    from asyncio import sslproto

    cls = sslproto._SSLProtocolTransport
    for name in ("abort", "_force_close"):
        original = getattr(cls, name)

        def guarded(self: sslproto._SSLProtocolTransport, *args: object, _original: object = original) -> None:
            if self._ssl_protocol is None:  # the connection is gone: nothing left to abort
                self._closed = True
                return
            _original(self, *args)  # type: ignore[operator]

        setattr(cls, name, guarded)


if sys.version_info < (3, 11, 7):
    _guard_ssl_abort()

class TransportError(Exception):
    """A cloud call that got no usable HTTP reply. Never carries the request body (it holds the token)."""

    def __init__(self, message: str, *, sent: bool, retryable: bool = True, bad_reply: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # sent=False: no byte of the request reached the network; True: the server may have it.
        self.sent = sent
        # retryable: transient (refused, reset, timeout); False for a refused certificate or a malformed reply.
        self.retryable = retryable
        # bad_reply: the server answered, but with something that is not a usable HTTP reply.
        self.bad_reply = bad_reply

    def __repr__(self) -> str:
        return f"TransportError({self.message!r}, sent={self.sent}, retryable={self.retryable})"


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A complete HTTP reply: status, body, and Retry-After in seconds when the server sent one."""

    status: int
    body: bytes
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _keepalive_socket(addr_info: tuple[int, int, int, str, tuple[object, ...]]) -> socket.socket:
    # aiohttp's own sockets get no keepalive probes: a flow dropped by a NAT while a call is
    # parked (up to ~15 s) would only show as a read timeout; probes find it out.
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", TCP_KEEPIDLE), ("TCP_KEEPINTVL", TCP_KEEPINTVL),
                            ("TCP_KEEPCNT", TCP_KEEPCNT)):
            option = getattr(socket, name, None)
            if option is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        sock.close()
        raise
    return sock


def _never_written(exc: BaseException) -> bool:
    """True when aiohttp refused to write because the pooled connection was already closing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, aiohttp.ClientConnectionResetError) and _NOT_WRITTEN_MESSAGE in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _map_error(exc: BaseException, sent: bool, read_timeout: float, connect_timeout: float) -> TransportError:
    """aiohttp's exception -> TransportError; `sent` is whether the request's headers went out."""
    if _never_written(exc):
        return TransportError("the pooled connection closed before the request was written", sent=False)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or str(exc.certificate_error)
        return TransportError(f"TLS certificate verification failed: {reason}", sent=False, retryable=False)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return TransportError(f"TLS handshake failed: {_reason(exc.os_error)}", sent=False)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return TransportError(f"cannot resolve {exc.host}: {exc.strerror or _reason(exc.os_error)}", sent=False)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return TransportError(f"cannot connect to the proxy: {_reason(exc.os_error)}", sent=False)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return TransportError(f"the proxy refused the tunnel: HTTP {exc.status}", sent=False,
                              retryable=exc.status >= 500)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = "connection refused" if isinstance(exc.os_error, ConnectionRefusedError) else _reason(exc.os_error)
        return TransportError(f"cannot connect to {exc.host}:{exc.port}: {reason}", sent=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportError(f"connect timeout after {connect_timeout:g} s", sent=False)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        if not sent:
            return TransportError(f"connect timeout after {connect_timeout:g} s", sent=False)
        return TransportError(f"no reply within {read_timeout:g} s", sent=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError("server closed the connection without a reply", sent=sent)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError("reply cut short: the connection ended mid-body", sent=sent)
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp's parser refused the reply (bad status line, Content-Length, framing).
        return TransportError(f"malformed HTTP reply: {exc.message}", sent=sent, retryable=False, bad_reply=True)
    if isinstance(exc, ConnectionResetError) or (isinstance(exc, OSError) and exc.errno is not None):
        return TransportError(f"connection reset: {_reason(exc)}", sent=sent)
    return TransportError(f"connection failed: {exc.__class__.__name__}", sent=sent)


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.__class__.__name__)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


class AiohttpTransport:
    """POSTs JSON to one base URL through one aiohttp session; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 1024,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "capture-bridge",
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_reply = max_reply_bytes
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "application/json",
            "Content-Type": "application/json",
            # The cloud's replies are tiny: compression would only add a decoder to get wrong.
            "Accept-Encoding": "identity",
        }
        # Pool waiting is bounded by the service (never more calls than connections); `connect`
        # covers DNS, TCP and the TLS handshake; `sock_read` is the wait for each reply byte.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._proxy: URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None
        self._closed = False
        self.dns_lookups = 0
        self.connections_opened = 0

    def _open_session(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running loop, and `capture` builds us outside one.
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(self._on_headers_sent)
        trace.on_dns_resolvehost_start.append(self._on_dns_lookup)
        trace.on_connection_create_end.append(self._on_connection_created)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            use_dns_cache=True,
            ttl_dns_cache=DNS_CACHE_TTL,
            keepalive_timeout=self._keepalive_timeout,
            ssl=self._ssl,
            socket_factory=_keepalive_socket,
            enable_cleanup_closed=_SSL_SHUTDOWN_LEAKS,
        )
        # HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and the proxy's .netrc entry), read once with aiohttp's own
        # helper: trust_env=True would read them, and ~/.netrc, in a worker thread on every request.
        try:
            self._proxy, self._proxy_auth = get_env_proxy_for_url(URL(self._base_url))
        except LookupError:
            self._proxy, self._proxy_auth = None, None
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            trust_env=False,
            trace_configs=[trace],
            auto_decompress=False,
            raise_for_status=False,
            # The cloud sets no cookies; a real jar would be matched against every request.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding",),
        )

    async def _on_headers_sent(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
    ) -> None:
        ctx.trace_request_ctx.sent = True

    async def _on_dns_lookup(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceDnsResolveHostStartParams
    ) -> None:
        self.dns_lookups += 1

    async def _on_connection_created(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceConnectionCreateEndParams
    ) -> None:
        self.connections_opened += 1

    async def post_json(self, path: str, body: bytes) -> HttpReply:
        """POST `body` to base URL + `path`; any HTTP status is a reply, everything else a TransportError."""
        if self._closed:
            raise TransportError("client is closed", sent=False, retryable=False)
        if self._session is None:
            self._session = self._open_session()
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self._base_url + path)
        progress = SimpleNamespace(sent=False)
        try:
            async with self._session.post(
                url,
                data=body,
                headers=self._headers,
                allow_redirects=False,
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
                trace_request_ctx=progress,
            ) as response:
                return await self._read(response)
        except TransportError:
            raise
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise _map_error(exc, progress.sent, self._read_timeout, self._connect_timeout) from None

    async def _read(self, response: aiohttp.ClientResponse) -> HttpReply:
        coding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise TransportError(f"reply is {coding}-encoded although we asked for identity",
                                 sent=True, retryable=False, bad_reply=True)
        length = response.content_length
        if length is not None and length > self._max_reply:
            raise TransportError(f"reply of {length} bytes is over the {self._max_reply}-byte cap",
                                 sent=True, retryable=False, bad_reply=True)
        body = bytearray()
        # Read to the end whatever the framing, never past the cap (a truncated body raises ClientPayloadError).
        while chunk := await response.content.read(self._max_reply + 1 - len(body)):
            body += chunk
            if len(body) > self._max_reply:
                raise TransportError(f"reply is over the {self._max_reply}-byte cap",
                                     sent=True, retryable=False, bad_reply=True)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return HttpReply(response.status, bytes(body), retry_after)

    async def aclose(self) -> None:
        """Close the session and every pooled connection; later calls fail without sending."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Connections closed on an error earlier may still be finishing their TLS shutdown;
            # a moment lets their sockets close before the event loop (and the process) ends.
            await asyncio.sleep(0.05)
