"""Two tiny TCP middlemen for the transport tests, on asyncio in the test's own loop.

* `ConnectProxy`: an HTTP CONNECT proxy (what `HTTPS_PROXY` points at), recording each tunnel.
* `Forwarder`: a plain TCP relay that can turn every open connection into a black hole, the way
  a NAT or load balancer silently forgets an idle flow (no FIN, no RST: bytes just vanish).

Written by hand because no maintained library offers either as a test fixture; each is a few
lines of stream piping.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flow: _Flow) -> None:
    try:
        while data := await reader.read(65536):
            if not flow.black_hole:
                writer.write(data)
                await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if not flow.black_hole and writer.can_write_eof():
                writer.write_eof()


@dataclass
class _Flow:
    black_hole: bool = False
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Forwarder:
    """Relays host:<port> to `target`; `black_hole()` makes every open flow swallow bytes."""

    target_host: str
    target_port: int
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    flows: list[_Flow] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def __aenter__(self) -> Forwarder:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _shut(self._server, self._tasks, self._writers)

    def black_hole(self) -> None:
        """From now on, open flows forward nothing in either direction and never close."""
        for flow in self.flows:
            flow.black_hole = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._writers.append(writer)
        flow = _Flow()
        self.flows.append(flow)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            self._writers.append(up_writer)

            async def from_client() -> None:
                assert up_writer is not None
                await _pipe(reader, up_writer, flow)
                flow.client_closed.set()

            await asyncio.gather(from_client(), _pipe(up_reader, writer, flow))
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            await _close(writer, up_writer)


async def _close(*writers: asyncio.StreamWriter | None) -> None:
    for writer in writers:
        if writer is not None:
            # Abort, not close: nothing is owed to a peer of a test relay, and a close could wait.
            writer.transport.abort()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await writer.wait_closed()


async def _shut(server: asyncio.Server | None, tasks: set[asyncio.Task[None]],
                writers: list[asyncio.StreamWriter]) -> None:
    """Stop listening, cancel the relays, and abort whatever they left open."""
    assert server is not None
    server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Whatever a cancelled relay left open is closed here, before the test's loop goes away.
    for writer in writers:
        writer.transport.abort()
    # Let the aborts' connection_lost callbacks (which close the sockets) run before the loop ends.
    for _ in range(3):
        await asyncio.sleep(0)


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that records the `host:port` of every tunnel it opens."""

    port: int = 0
    tunnels: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _shut(self._server, self._tasks, self._writers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or not port.isdigit():
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.tunnels.append(target)
            try:
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                self._writers.append(up_writer)
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            flow = _Flow()
            try:
                await asyncio.gather(_pipe(reader, up_writer, flow), _pipe(up_reader, writer, flow))
            finally:
                await _close(up_writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            await _close(writer)
