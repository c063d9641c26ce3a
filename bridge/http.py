"""A lean HTTP/1.1 client on asyncio, for POSTing JSON to the vendor cloud.

It exists because of per-call cost. The bridge holds 1000+ requests in flight
from one event loop, each parked by the cloud for up to ~15 s. `requests` with a
thread per call measured 2.9 s against an ideal 2.0 s for 1000 calls at 2 s
latency: threads, GIL hand-offs and urllib3's per-call machinery add up. Here each
connection is one `asyncio.Protocol` that buffers bytes and parses the reply
itself (no StreamReader, no task per connection, one timer per request), and
idle connections are kept in a LIFO keep-alive pool.

Only what the bridge needs: POST, JSON body, replies framed by Content-Length,
chunked encoding or connection close. No redirects, no compression, no proxies.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

__all__ = ["HttpClient", "HttpError", "HttpReply"]

MAX_BODY = 8 * 1024 * 1024
# Status line + headers; the cloud sends well under 1 KiB, anything near this is not a sane reply.
MAX_HEAD = 64 * 1024
# Chunk-size line including extensions, and a trailer section.
MAX_LINE = 8 * 1024
# Request heads are cached per path; the bridge uses a handful of constant paths.
MAX_CACHED_PATHS = 64

_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(7)
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class HttpError(Exception):
    """Transport failure. Message must never contain the request body (it carries a secret token)."""

    def __init__(self, message: str, *, sent: bool, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        # sent=False: the request certainly did not reach the server; True: it may have.
        self.sent = sent
        self.retryable = retryable

    def __repr__(self) -> str:
        return f"HttpError({self.message!r}, sent={self.sent}, retryable={self.retryable})"


class _StaleConnection(HttpError):
    """A reused keep-alive connection died before a single byte of the reply arrived."""


class _Malformed(Exception):
    """The reply cannot be parsed; the text is safe to show (it never quotes the request)."""


class _TooLarge(Exception):
    """The reply is larger than MAX_BODY."""


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A complete HTTP reply: the final status code and the decoded body."""

    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: writes a request, parses the reply as bytes arrive."""

    __slots__ = (
        "_body",
        "_buf",
        "_client",
        "_got_data",
        "_lost",
        "_need",
        "_state",
        "_status",
        "_timer",
        "_transport",
        "_waiter",
        "is_open",
        "keep_alive",
        "reused",
    )

    def __init__(self, client: HttpClient) -> None:
        self._client = client
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._state = _IDLE
        self._waiter: asyncio.Future[HttpReply] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._need = 0
        self._body = bytearray()
        self._got_data = False
        self._lost: asyncio.Future[None] | None = None
        self.keep_alive = False
        self.reused = False
        self.is_open = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.is_open = True
        self._client._open += 1

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            # Bytes nobody asked for (a 408 before hanging up, or garbage) leave the stream unusable.
            self.abort()
            return
        self._got_data = True
        self._buf += data
        try:
            self._parse()
        except _Malformed as exc:
            self._fail(HttpError(f"malformed HTTP reply: {exc}", sent=True, retryable=False))
        except _TooLarge:
            self._fail(HttpError(f"reply body larger than {MAX_BODY} bytes", sent=True, retryable=False))

    def eof_received(self) -> bool:
        # Half-open connections are useless to HTTP; let the transport close and report connection_lost.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        waiter = self._waiter
        if waiter is None:
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            body = bytes(self._buf)
            self._buf.clear()
            self._finish(body)
            return
        if exc is None:
            message = "server closed the connection " + ("mid-reply" if self._got_data else "before replying")
        elif isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            message = "connection reset"
        elif isinstance(exc, ssl.SSLError):
            message = f"TLS error: {exc.reason or exc.__class__.__name__}"
        else:
            message = f"connection lost: {exc.__class__.__name__}"
        if self.reused and not self._got_data:
            self._fail(_StaleConnection(message, sent=True))
        else:
            # Once part of a reply arrived, the server has acted on the request: a retry could
            # fire the camera twice. A reset before any reply byte is the transient kind.
            self._fail(HttpError(message, sent=True, retryable=not self._got_data))

    # -- used by HttpClient -------------------------------------------------------------

    def send(self, request: bytes, timeout: float) -> asyncio.Future[HttpReply]:
        """Write one request; the future resolves with the reply or an HttpError."""
        loop = self._client._loop
        assert loop is not None
        assert self._transport is not None
        waiter: asyncio.Future[HttpReply] = loop.create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._got_data = False
        self._timer = loop.call_later(timeout, self._timed_out)
        self._transport.write(request)
        return waiter

    def close(self) -> None:
        """Close gracefully (flush, TLS close_notify); the connection leaves the pool at once."""
        self._mark_closed()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding anything unsent or unread."""
        self._mark_closed()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def lost_future(self) -> asyncio.Future[None]:
        """A future resolved by connection_lost; only asked for open connections (see aclose)."""
        loop = self._client._loop
        assert loop is not None
        if self._lost is None:
            self._lost = loop.create_future()
        return self._lost

    # -- internals ----------------------------------------------------------------------

    def _mark_closed(self) -> None:
        if self.is_open:
            self.is_open = False
            client = self._client
            client._open -= 1
            client._idle.pop(self, None)

    def _timed_out(self) -> None:
        self._timer = None
        # Not retryable: the request went out and may be acting on the device (a retry could fire it twice).
        self._fail(HttpError(f"no reply within {self._client._read_timeout} s", sent=True, retryable=False))

    def _fail(self, error: HttpError) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._waiter
        self._waiter = None
        self._state = _IDLE
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _finish(self, body: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = _IDLE
        if self._buf:
            # Bytes beyond the reply: we never pipeline, so framing is off and the stream can't be trusted.
            self.keep_alive = False
            self._buf.clear()
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpReply(self._status, body))

    def _parse(self) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise _Malformed("headers too large")
                    return
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._parse_head(head)
            elif state == _LENGTH:
                need = self._need
                if len(buf) < need:
                    return
                body = bytes(buf[:need])
                del buf[:need]
                self._finish(body)
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_LINE:
                        raise _Malformed("chunk size line too long")
                    return
                digits = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                if not digits or len(digits) > 16 or digits.strip(_HEX_DIGITS):
                    raise _Malformed("bad chunk size")
                size = int(digits, 16)
                if size == 0:
                    self._state = _TRAILERS
                else:
                    if len(self._body) + size > MAX_BODY:
                        raise _TooLarge
                    self._need = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                need = self._need
                if len(buf) < need + 2:
                    return
                if buf[need : need + 2] != b"\r\n":
                    raise _Malformed("chunk not followed by CRLF")
                self._body += buf[:need]
                del buf[: need + 2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if len(buf) < 2:
                    return
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > MAX_LINE:
                            raise _Malformed("trailers too large")
                        return
                    del buf[: end + 4]
                body = bytes(self._body)
                self._body = bytearray()
                self._finish(body)
                return
            elif state == _UNTIL_CLOSE:
                if len(buf) > MAX_BODY:
                    raise _TooLarge
                return
            else:
                return

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or rest[3:4] not in (b"", b" "):
            raise _Malformed("bad status line")
        status = int(code)
        keep_alive = version == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        other_coding = False
        for line in lines[1:]:
            if not line or line[0] in (32, 9):
                # Obsolete line folding: only continues a value, and none of the headers we read use it.
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1] in (32, 9):
                raise _Malformed("bad header line")
            name = name.lower()
            if name == b"content-length":
                values = {v.strip() for v in value.split(b",")}
                if len(values) != 1:
                    raise _Malformed("conflicting Content-Length")
                number = values.pop()
                if not number.isdigit() or (length is not None and int(number) != length):
                    raise _Malformed("bad Content-Length")
                length = int(number)
            elif name == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",") if c.strip()]
                if codings:
                    chunked = codings[-1] == b"chunked"
                    other_coding = not chunked
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if status < 200:
            if status == 101:
                raise _Malformed("unexpected 101 Switching Protocols")
            # Interim reply (100 Continue, 103 Early Hints): the real one follows on the same stream.
            self._state = _HEAD
            return
        self._status = status
        if status in (204, 304):
            self._need = 0
            self._state = _LENGTH
        elif chunked or other_coding:
            if length is not None:
                # Both framings: Transfer-Encoding wins, but a server that sends both is not trusted twice.
                keep_alive = False
            if chunked:
                self._body = bytearray()
                self._state = _CHUNK_SIZE
            else:
                keep_alive = False
                self._state = _UNTIL_CLOSE
        elif length is not None:
            if length > MAX_BODY:
                raise _TooLarge
            self._need = length
            self._state = _LENGTH
        else:
            keep_alive = False
            self._state = _UNTIL_CLOSE
        self.keep_alive = keep_alive


class HttpClient:
    """POSTs JSON to one origin over a bounded pool of keep-alive connections."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 1024,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "capture-bridge",
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not parts.hostname:
            raise ValueError(f"base_url has no host: {base_url!r}")
        if parts.query or parts.fragment or parts.username is not None:
            raise ValueError("base_url must not carry a query, fragment or credentials")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        _check_header_text("user_agent", user_agent)
        _check_header_text("base_url path", parts.path, allow_space=False)
        default_port = 443 if parts.scheme == "https" else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"
        self._base_path = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._user_agent = user_agent
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = float(read_timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heads: dict[str, bytes] = {}
        # Insertion-ordered dict as a LIFO stack: popitem() takes the most recently used connection,
        # which is least likely to have been closed by the server's idle timeout; removal is O(1).
        self._idle: dict[_Connection, None] = {}
        self._open = 0
        self._free = max_connections
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections currently open (idle + busy)."""
        return self._open

    async def post_json(self, path: str, body: bytes) -> HttpReply:
        """POST `body` as JSON to the base path + `path`; any status is a reply, transport failures raise."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        head = self._heads.get(path)
        if head is None:
            head = self._head_for(path)
        request = b"%b%d\r\n\r\n%b" % (head, len(body), body)
        if self._free > 0:
            self._free -= 1
        else:
            await self._wait_for_slot()
        try:
            if self._closed:
                raise HttpError("client is closed", sent=False, retryable=False)
            if self._idle:
                conn, _ = self._idle.popitem()
                try:
                    return await self._exchange(conn, request)
                except _StaleConnection:
                    # The server dropped an idle connection just as we reused it; one retry on a fresh
                    # connection is what every keep-alive client does (the server never saw a reply start).
                    pass
                try:
                    conn = await self._connect()
                except HttpError as exc:
                    # The first attempt's bytes were written, so "certainly not sent" no longer holds.
                    raise HttpError(exc.message, sent=True, retryable=exc.retryable) from exc
            else:
                conn = await self._connect()
            return await self._exchange(conn, request)
        finally:
            self._release_slot()

    async def aclose(self) -> None:
        """Close all pooled connections; later calls to post_json fail, in-flight ones finish first."""
        self._closed = True
        conns = list(self._idle)
        self._idle.clear()
        if not conns:
            return
        lost = [conn.lost_future() for conn in conns]
        for conn in conns:
            # Abort, not close: a TLS close_notify exchange could hold shutdown for the full ssl timeout.
            conn.abort()
        await asyncio.wait(lost, timeout=self._connect_timeout)

    # -- internals ----------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # Connections, futures and timers belong to one loop; the first request picks it.
        if self._loop is not None:
            raise RuntimeError("HttpClient is bound to another event loop")
        self._loop = loop

    def _head_for(self, path: str) -> bytes:
        if not path.startswith("/"):
            path = "/" + path
        _check_header_text("path", path, allow_space=False)
        head = (
            f"POST {self._base_path}{path} HTTP/1.1\r\n"
            f"Host: {self._host_header}\r\n"
            f"User-Agent: {self._user_agent}\r\n"
            "Accept: application/json\r\n"
            "Content-Type: application/json\r\n"
            "Connection: keep-alive\r\n"
            "Content-Length: "
        ).encode("ascii")
        if len(self._heads) < MAX_CACHED_PATHS:
            self._heads[path] = head
        return head

    async def _exchange(self, conn: _Connection, request: bytes) -> HttpReply:
        waiter = conn.send(request, self._read_timeout)
        try:
            reply = await waiter
        except BaseException:
            # Timeout and transport errors already aborted it; cancellation leaves a half-read stream.
            conn.abort()
            raise
        conn.reused = True
        if conn.keep_alive and conn.is_open and not self._closed:
            self._idle[conn] = None
        else:
            conn.close()
        return reply

    async def _connect(self) -> _Connection:
        loop = self._loop
        assert loop is not None
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise HttpError(f"connect timeout after {self._connect_timeout} s", sent=False) from None
        except ConnectionRefusedError:
            raise HttpError("connection refused", sent=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise HttpError(
                f"TLS certificate verification failed: {exc.verify_message}", sent=False, retryable=False
            ) from None
        except ssl.SSLError as exc:
            raise HttpError(f"TLS handshake failed: {exc.reason or exc}", sent=False) from None
        except socket.gaierror as exc:
            raise HttpError(f"cannot resolve {self._host}: {exc.strerror}", sent=False) from None
        except OSError as exc:
            raise HttpError(f"connect failed: {exc.strerror or exc}", sent=False) from None
        return conn

    async def _wait_for_slot(self) -> None:
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # We were handed a slot but are leaving without using it: pass it on.
                self._release_slot()
            raise

    def _release_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                # Hand the slot over directly so a newcomer on the fast path cannot overtake the queue.
                waiter.set_result(None)
                return
        self._free += 1


def _check_header_text(what: str, text: str, *, allow_space: bool = True) -> None:
    # Anything else could split the request line or inject a header.
    low = " " if allow_space else "!"
    if not text.isascii() or any(c < low or c == "\x7f" for c in text):
        raise ValueError(f"{what} must be printable ASCII" + ("" if allow_space else " without spaces"))
