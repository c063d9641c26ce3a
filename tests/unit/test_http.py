"""Tests for bridge.http against real tiny servers on 127.0.0.1 (and the parser fed byte by byte)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bridge.http import MAX_BODY, HttpClient, HttpError, HttpReply, _Connection

T = TypeVar("T")
SECRET = b'{"token":"SECRET-TOKEN-5f3a9c","FAssetGUID":"x"}'


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run one test coroutine on a fresh loop; the outer bound turns a hang into a failure."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    conn_no: int


# A handler answers one parsed request on the raw writer; returning False ends the connection.
Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    """An HTTP/1.1 server that records what it saw and lets each test script the reply."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    current: int = 0
    peak: int = 0
    closed: int = 0
    port: int = 0
    tls: ssl.SSLContext | None = None
    _server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/OpenApi"

    async def __aenter__(self) -> Server:
        # Large backlog: the smoke test opens hundreds of connections at once.
        self._server = await asyncio.start_server(
            self._serve,
            "127.0.0.1",
            self.port,
            backlog=2048,
            ssl=self.tls,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, target, headers, body, conn_no)
                self.requests.append(request)
                if not await self.handler(request, reader, writer):
                    return
        finally:
            self.current -= 1
            self.closed += 1
            writer.close()


def reply(body: bytes = b'{"Result":200}', status: str = "200 OK", *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer(raw: bytes, *, delay: float = 0.0, keep_open: bool = True) -> Handler:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if delay:
            await asyncio.sleep(delay)
        writer.write(raw)
        await writer.drain()
        return keep_open

    return handler


async def hang(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    # Never reply; return once the client hangs up so the server notices the close.
    await reader.read()
    return False


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for state that only changes when the loop processes socket events."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error), getattr(error, "message", "")):
        assert "SECRET" not in text
    for linked in (error.__cause__, error.__context__):
        if linked is not None:
            assert "SECRET" not in str(linked)
            assert "SECRET" not in repr(linked)


# -- request shape -------------------------------------------------------------------------


def test_request_line_headers_and_body() -> None:
    async def main() -> tuple[HttpReply, Server]:
        async with Server(answer(reply(b'{"Result":200,"Data":[]}'))) as server:
            client = HttpClient(server.base_url, user_agent="bridge-test/1")
            result = await client.post_json("/login", b'{"a":1}')
            await client.aclose()
            return result, server

    result, server = run(main())
    assert result == HttpReply(200, b'{"Result":200,"Data":[]}')
    [request] = server.requests
    assert (request.method, request.target) == ("POST", "/OpenApi/login")
    assert request.body == b'{"a":1}'
    assert request.headers == {
        "host": f"127.0.0.1:{server.port}",
        "content-type": "application/json",
        "content-length": "7",
        "accept": "application/json",
        "user-agent": "bridge-test/1",
        "connection": "keep-alive",
    }


@pytest.mark.parametrize(
    ("base_url", "path", "request_line", "host"),
    [
        ("https://cloud.example:443/OpenApi", "/login", b"POST /OpenApi/login HTTP/1.1", b"cloud.example"),
        ("http://cloud.example/OpenApi/", "/login", b"POST /OpenApi/login HTTP/1.1", b"cloud.example"),
        ("https://cloud.example:3443", "/x", b"POST /x HTTP/1.1", b"cloud.example:3443"),
        ("http://[::1]:8092/OpenApi", "/login", b"POST /OpenApi/login HTTP/1.1", b"[::1]:8092"),
    ],
)
def test_host_header_and_path_join(base_url: str, path: str, request_line: bytes, host: bytes) -> None:
    # No server can listen on these names, so this checks the request head the client would send.
    head = HttpClient(base_url)._head_for(path)
    assert head.startswith(request_line + b"\r\n")
    assert b"\r\nHost: " + host + b"\r\n" in head


@pytest.mark.parametrize(
    "base_url", ["ftp://host/x", "http:///nohost", "http://host/a b", "http://host/x?q=1", "http://u:p@host/"]
)
def test_bad_base_url_is_rejected(base_url: str) -> None:
    with pytest.raises(ValueError):
        HttpClient(base_url)


def test_path_that_could_inject_a_header_is_rejected() -> None:
    async def main() -> None:
        client = HttpClient("http://127.0.0.1:1/OpenApi")
        await client.post_json("/login HTTP/1.1\r\nX-Evil: 1\r\n", b"{}")

    with pytest.raises(ValueError):
        run(main())


def test_constructed_outside_a_loop_binds_lazily() -> None:
    port = free_port()
    client = HttpClient(f"http://127.0.0.1:{port}/OpenApi")  # no loop is running here

    async def main() -> int:
        async with Server(answer(reply()), port=port):
            result = await client.post_json("/x", b"{}")
            await client.aclose()
            return result.status

    assert run(main()) == 200


# -- reply framing ------------------------------------------------------------------------


def test_content_length_reply() -> None:
    async def main() -> HttpReply:
        async with Server(answer(reply(b'{"Result":105}', "500 Internal Server Error"))) as server:
            client = HttpClient(server.base_url)
            result = await client.post_json("/x", b"{}")
            await client.aclose()
            return result

    # Any status is a reply, not an exception; the caller maps it.
    assert run(main()) == HttpReply(500, b'{"Result":105}')


def test_chunked_reply_with_trailers_keeps_connection() -> None:
    async def chunked(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        parts = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b'5;name=value\r\n{"Res\r\n',
            b'9\r\nult":200}\r\n',
            b"0\r\nX-Checksum: abc\r\n\r\n",
        ]
        for part in parts:
            writer.write(part)
            await writer.drain()
        return True

    async def main() -> tuple[list[HttpReply], Server]:
        async with Server(chunked) as server:
            client = HttpClient(server.base_url)
            results = [await client.post_json("/x", b"{}") for _ in range(2)]
            await client.aclose()
            return results, server

    results, server = run(main())
    assert results == [HttpReply(200, b'{"Result":200}')] * 2
    # The trailer was consumed exactly: the second request reused the same connection.
    assert server.connections == 1


def test_close_delimited_reply() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"Result":200}'

    async def main() -> tuple[HttpReply, int]:
        async with Server(answer(raw, keep_open=False)) as server:
            client = HttpClient(server.base_url)
            result = await client.post_json("/x", b"{}")
            return result, client.open_connections

    assert run(main()) == (HttpReply(200, b'{"Result":200}'), 0)


def test_interim_100_continue_is_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"{}", "201 Created")

    async def main() -> HttpReply:
        async with Server(answer(raw)) as server:
            client = HttpClient(server.base_url)
            result = await client.post_json("/x", b"{}")
            await client.aclose()
            return result

    assert run(main()) == HttpReply(201, b"{}")


# -- keep-alive pool ----------------------------------------------------------------------


def test_keep_alive_reuses_one_connection() -> None:
    async def main() -> tuple[list[int], Server, int]:
        async with Server(answer(reply())) as server:
            client = HttpClient(server.base_url)
            statuses = [(await client.post_json("/x", b"{}")).status for _ in range(3)]
            open_after = client.open_connections
            await client.aclose()
            await until(lambda: server.closed == 1)
            return statuses, server, open_after

    statuses, server, open_after = run(main())
    assert statuses == [200, 200, 200]
    assert server.connections == 1
    assert [r.conn_no for r in server.requests] == [1, 1, 1]
    assert open_after == 1


@pytest.mark.parametrize(
    "raw",
    [
        reply(b"{}", "200 OK", "Connection: close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["connection-close", "http10"],
)
def test_connection_close_is_not_reused(raw: bytes) -> None:
    async def main() -> tuple[list[int], Server]:
        # The server would keep the connection: only the header tells the client not to reuse it.
        async with Server(answer(raw, keep_open=True)) as server:
            client = HttpClient(server.base_url)
            open_after = []
            for _ in range(2):
                await client.post_json("/x", b"{}")
                open_after.append(client.open_connections)
            return open_after, server

    open_after, server = run(main())
    assert open_after == [0, 0]
    assert server.connections == 2


def test_http10_keep_alive_is_reused() -> None:
    raw = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> Server:
        async with Server(answer(raw)) as server:
            client = HttpClient(server.base_url)
            for _ in range(2):
                await client.post_json("/x", b"{}")
            await client.aclose()
            return server

    assert run(main()).connections == 1


def test_idle_connection_closed_by_server_leaves_the_pool() -> None:
    async def main() -> tuple[HttpReply, Server]:
        # Reply (without Connection: close), then hang up: like a server's keep-alive timeout.
        async with Server(answer(reply(), keep_open=False)) as server:
            client = HttpClient(server.base_url)
            await client.post_json("/x", b"{}")
            await until(lambda: client.open_connections == 0)
            result = await client.post_json("/x", b"{}")
            await client.aclose()
            return result, server

    result, server = run(main())
    assert result.status == 200
    assert server.connections == 2
    # The dead connection was never written to: no transparent retry was needed.
    assert len(server.requests) == 2


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_stale_pooled_connection_is_retried_on_a_fresh_one(how: str) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.conn_no == 1 and len(server.requests) == 2:
            # The second request on connection 1 meets a server that already gave up on it.
            if how == "rst":
                reset(writer)
            return False
        writer.write(reply(b'{"n":%d}' % len(server.requests)))
        await writer.drain()
        return True

    server = Server(handler)

    async def main() -> tuple[list[HttpReply], int]:
        async with server:
            client = HttpClient(server.base_url)
            results = [await client.post_json("/x", b"{}") for _ in range(2)]
            open_after = client.open_connections
            await client.aclose()
            return results, open_after

    results, open_after = run(main())
    assert results == [HttpReply(200, b'{"n":1}'), HttpReply(200, b'{"n":3}')]
    assert server.connections == 2
    assert [r.conn_no for r in server.requests] == [1, 1, 2]
    assert open_after == 1


def test_failed_retry_after_stale_connection_counts_as_sent() -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) == 1:
            writer.write(reply())
            await writer.drain()
            return True
        # The second request reached the server on the stale connection; then the server goes away.
        assert server._server is not None
        server._server.close()
        return False

    server = Server(handler)

    async def main() -> HttpError:
        async with server:
            client = HttpClient(server.base_url)
            await client.post_json("/x", b"{}")
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", SECRET)
            return caught.value

    error = run(main())
    assert error.message == "connection refused"
    # The retry never connected, but the first attempt was written: it may have been delivered.
    assert error.sent is True
    assert len(server.requests) == 2
    assert_no_secret(error)


def test_fresh_connection_closed_before_reply_is_not_retried() -> None:
    async def main() -> tuple[HttpError, Server]:
        async with Server(answer(b"", keep_open=False)) as server:
            client = HttpClient(server.base_url)
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", SECRET)
            return caught.value, server

    error, server = run(main())
    assert error.sent is True
    assert error.retryable is True
    assert "before replying" in error.message
    assert len(server.requests) == 1
    assert_no_secret(error)


def test_max_connections_is_respected() -> None:
    async def main() -> tuple[list[int], Server, int]:
        async with Server(answer(reply(), delay=0.05)) as server:
            client = HttpClient(server.base_url, max_connections=3)
            results = await asyncio.gather(*(client.post_json("/x", b"{}") for _ in range(10)))
            open_after = client.open_connections
            await client.aclose()
            return [r.status for r in results], server, open_after

    statuses, server, open_after = run(main())
    assert statuses == [200] * 10
    assert server.peak == 3
    assert server.connections == 3
    assert open_after == 3


def test_waiting_for_a_slot_does_not_count_against_read_timeout() -> None:
    async def main() -> list[int]:
        async with Server(answer(reply(), delay=0.15)) as server:
            # Four requests through one connection take ~0.6 s; each alone takes 0.15 s < 0.4 s.
            client = HttpClient(server.base_url, max_connections=1, read_timeout=0.4)
            results = await asyncio.gather(*(client.post_json("/x", b"{}") for _ in range(4)))
            await client.aclose()
            return [r.status for r in results]

    assert run(main()) == [200] * 4


# -- failures -----------------------------------------------------------------------------


def test_connection_refused_is_not_sent() -> None:
    async def main() -> HttpError:
        client = HttpClient(f"http://127.0.0.1:{free_port()}/OpenApi")
        with pytest.raises(HttpError) as caught:
            await client.post_json("/login", SECRET)
        assert client.open_connections == 0
        return caught.value

    error = run(main())
    assert (error.message, error.sent, error.retryable) == ("connection refused", False, True)
    assert_no_secret(error)


def test_read_timeout_is_sent_fast_and_closes_the_connection() -> None:
    async def main() -> tuple[HttpError, float, int, Server]:
        async with Server(hang) as server:
            client = HttpClient(server.base_url, read_timeout=0.2)
            started = time.monotonic()
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", SECRET)
            elapsed = time.monotonic() - started
            open_after = client.open_connections
            await until(lambda: server.closed == 1)
            return caught.value, elapsed, open_after, server

    error, elapsed, open_after, server = run(main())
    assert error.sent is True
    assert error.retryable is False
    assert error.message == "no reply within 0.2 s"
    assert 0.15 < elapsed < 1.0
    assert open_after == 0
    assert server.closed == 1
    assert_no_secret(error)


@pytest.mark.parametrize("reused", [False, True])
def test_reset_mid_reply_is_sent(reused: bool) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if reused and len(server.requests) == 1:
            writer.write(reply())
            await writer.drain()
            return True
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"Res')
        await writer.drain()
        reset(writer)
        return False

    server = Server(handler)

    async def main() -> HttpError:
        async with server:
            client = HttpClient(server.base_url)
            if reused:
                await client.post_json("/x", b"{}")
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", SECRET)
            assert client.open_connections == 0
            return caught.value

    error = run(main())
    assert error.sent is True
    assert error.retryable is False, "part of a reply arrived: the server acted on it"
    assert error.message in ("connection reset", "server closed the connection mid-reply")
    # Part of a reply arrived, so even on a reused connection it must not be replayed.
    assert len(server.requests) == (2 if reused else 1)
    assert_no_secret(error)


def test_malformed_reply_is_not_retryable() -> None:
    async def main() -> HttpError:
        async with Server(answer(b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n")) as server:
            client = HttpClient(server.base_url)
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", SECRET)
            assert client.open_connections == 0
            return caught.value

    error = run(main())
    assert error.message.startswith("malformed HTTP reply")
    assert (error.sent, error.retryable) == (True, False)
    assert_no_secret(error)


def test_oversized_body_is_refused_from_the_header() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)

    async def main() -> HttpError:
        async with Server(answer(head)) as server:
            client = HttpClient(server.base_url)
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", b"{}")
            return caught.value

    error = run(main())
    assert (error.sent, error.retryable) == (True, False)
    assert "larger than" in error.message


def test_cancel_closes_the_connection_and_releases_the_slot() -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) == 1:
            return await hang(request, reader, writer)
        writer.write(reply())
        await writer.drain()
        return True

    server = Server(handler)

    async def main() -> tuple[int, int]:
        async with server:
            client = HttpClient(server.base_url, max_connections=1)
            task = asyncio.create_task(client.post_json("/x", b"{}"))
            await until(lambda: len(server.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            open_after_cancel = client.open_connections
            # With one slot, this only runs if the cancelled call gave its slot back.
            result = await asyncio.wait_for(client.post_json("/x", b"{}"), 2.0)
            await until(lambda: server.closed == 1)
            await client.aclose()
            return open_after_cancel, result.status

    assert run(main()) == (0, 200)
    assert [r.conn_no for r in server.requests] == [1, 2]


def test_cancel_while_waiting_for_a_slot_passes_nothing_on_twice() -> None:
    async def main() -> tuple[list[int], int]:
        async with Server(answer(reply(), delay=0.05)) as server:
            client = HttpClient(server.base_url, max_connections=2)
            tasks = [asyncio.create_task(client.post_json("/x", b"{}")) for _ in range(6)]
            await asyncio.sleep(0)
            tasks[3].cancel()  # queued behind the two slots
            done = await asyncio.gather(*tasks, return_exceptions=True)
            statuses = [d.status if isinstance(d, HttpReply) else -1 for d in done]
            await client.aclose()
            return statuses, server.peak

    statuses, peak = run(main())
    assert statuses == [200, 200, 200, -1, 200, 200]
    assert peak == 2


def test_aclose_closes_pool_and_rejects_new_requests() -> None:
    async def main() -> tuple[int, int, HttpError, Server]:
        async with Server(answer(reply())) as server:
            client = HttpClient(server.base_url)
            await asyncio.gather(*(client.post_json("/x", b"{}") for _ in range(3)))
            before = client.open_connections
            await client.aclose()
            after = client.open_connections
            with pytest.raises(HttpError) as caught:
                await client.post_json("/x", b"{}")
            await until(lambda: server.closed == 3)
            return before, after, caught.value, server

    before, after, error, server = run(main())
    assert (before, after) == (3, 0)
    assert (error.sent, error.retryable) == (False, False)
    assert server.closed == 3


# -- TLS ----------------------------------------------------------------------------------


def test_tls_handshake_failure_is_not_sent() -> None:
    async def garbage_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answer the ClientHello with plain HTTP, as a misconfigured port would.
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> HttpError:
        server = await asyncio.start_server(garbage_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(f"https://127.0.0.1:{port}/OpenApi", connect_timeout=2.0)
        try:
            with pytest.raises(HttpError) as caught:
                await client.post_json("/login", SECRET)
        finally:
            server.close()
            await server.wait_closed()
        assert client.open_connections == 0
        return caught.value

    error = run(main())
    assert error.sent is False
    assert error.message.startswith(("TLS handshake failed", "connect failed"))
    assert_no_secret(error)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _tls_server(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_round_trip_and_reuse(certificate: tuple[Path, Path]) -> None:
    async def main() -> tuple[list[HttpReply], Server]:
        async with Server(answer(reply(b'{"Result":200}')), tls=_tls_server(certificate)) as server:
            trusted = ssl.create_default_context(cafile=str(certificate[0]))
            client = HttpClient(server.base_url, ssl_context=trusted)
            results = [await client.post_json("/login", b"{}") for _ in range(2)]
            await client.aclose()
            return results, server

    results, server = run(main())
    assert results == [HttpReply(200, b'{"Result":200}')] * 2
    assert server.connections == 1
    assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"


def test_untrusted_certificate_is_not_sent_and_not_retryable(certificate: tuple[Path, Path]) -> None:
    async def main() -> HttpError:
        async with Server(answer(reply()), tls=_tls_server(certificate)) as server:
            client = HttpClient(server.base_url)  # default context: system CAs only
            with pytest.raises(HttpError) as caught:
                await client.post_json("/login", SECRET)
            return caught.value

    error = run(main())
    assert (error.sent, error.retryable) == (False, False)
    assert error.message.startswith("TLS certificate verification failed")
    assert_no_secret(error)


# -- parser, fed in every split -----------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def feed(raw: bytes, step: int, *, eof: bool = False) -> tuple[HttpReply, bool]:
    """Drive one _Connection directly, `step` bytes per data_received, as a slow network would."""
    client = HttpClient("http://127.0.0.1:1/OpenApi")
    client._loop = asyncio.get_running_loop()
    conn = _Connection(client)
    conn.connection_made(FakeTransport())
    waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n", 5.0)
    for i in range(0, len(raw), step):
        assert not waiter.done(), "reply completed before all of it arrived"
        conn.data_received(raw[i : i + step])
    if eof:
        conn.connection_lost(None)
    return waiter.result(), conn.keep_alive


GOOD_REPLIES = {
    "length": (reply(b'{"a":1}'), False, HttpReply(200, b'{"a":1}'), True),
    "length-mixed-case": (
        b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\n\r\n{}",
        False,
        HttpReply(200, b"{}"),
        True,
    ),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\nA\r\n:123456789\r\n1\r\n}\r\n0\r\nX-Trailer: yes\r\nX-More: 1\r\n\r\n',
        False,
        HttpReply(200, b'{"a":123456789}'),
        True,
    ),
    "chunked-no-trailer": (
        b"HTTP/1.1 202 Accepted\r\nTRANSFER-ENCODING: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        False,
        HttpReply(202, b"{}"),
        True,
    ),
    "continue": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + reply(b"{}"),
        False,
        HttpReply(200, b"{}"),
        True,
    ),
    "no-content": (b"HTTP/1.1 204 No Content\r\n\r\n", False, HttpReply(204, b""), True),
    "no-reason": (b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", False, HttpReply(404, b""), True),
    "connection-close": (reply(b"{}", "200 OK", "Connection: close"), False, HttpReply(200, b"{}"), False),
    "http10": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", False, HttpReply(200, b"{}"), False),
    "http10-keep-alive": (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
        False,
        HttpReply(200, b"{}"),
        True,
    ),
    "until-close": (b'HTTP/1.1 200 OK\r\n\r\n{"a":1}', True, HttpReply(200, b'{"a":1}'), False),
}


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
@pytest.mark.parametrize("name", sorted(GOOD_REPLIES))
def test_parser_handles_any_split(name: str, step: int) -> None:
    raw, eof, expected, keep_alive = GOOD_REPLIES[name]
    assert run(feed(raw, step, eof=eof)) == (expected, keep_alive)


BAD_REPLIES = {
    "garbage": b"garbage\r\n\r\n",
    "short-status": b"HTTP/1.1 20 OK\r\n\r\n",
    "http2": b"HTTP/2 200\r\n\r\n",
    "no-colon": b"HTTP/1.1 200 OK\r\nNoColonHere\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "conflicting-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk-without-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REPLIES))
def test_parser_rejects_malformed(name: str) -> None:
    with pytest.raises(HttpError) as caught:
        run(feed(BAD_REPLIES[name], 1 << 20))
    assert caught.value.message.startswith("malformed HTTP reply")
    assert (caught.value.sent, caught.value.retryable) == (True, False)


def test_parser_caps_chunked_body() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (MAX_BODY + 1)
    with pytest.raises(HttpError) as caught:
        run(feed(raw, 1 << 20))
    assert "larger than" in caught.value.message


# -- concurrency --------------------------------------------------------------------------


def test_many_concurrent_requests_overlap() -> None:
    async def main() -> tuple[list[int], float, Server]:
        async with Server(answer(reply(), delay=0.2)) as server:
            client = HttpClient(server.base_url)
            started = time.monotonic()
            results = await asyncio.gather(*(client.post_json("/x", b"{}") for _ in range(500)))
            elapsed = time.monotonic() - started
            await client.aclose()
            return [r.status for r in results], elapsed, server

    statuses, elapsed, server = run(main(), timeout=60)
    assert statuses == [200] * 500
    assert server.peak == 500
    # Serial would take 100 s; this is a sanity bound, not a benchmark.
    assert elapsed < 5.0
