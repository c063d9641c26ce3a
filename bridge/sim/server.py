"""The mock cloud's HTTP server (aiohttp.web) around `Simulator`, and `capture-bridge mock-cloud`."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import signal
import socket
import ssl
import struct
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from bridge.sim.behaviours import (
    CT_GZIP_JSON,
    CT_JSON,
    DEMO_PASSWORD,
    DEMO_USER,
    IDLE_TIMEOUT,
    RAW_CLOSE,
    RAW_HANG,
    RAW_HUGE_LENGTH,
    RAW_RESET,
    RAW_TRUNCATED,
)
from bridge.sim.simulator import Simulator

log = logging.getLogger("bridge.sim.mockcloud")


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting the connections it accepts."""

    def __init__(self, cloud: MockCloud, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cloud = cloud

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        self._cloud.connections_accepted += 1
        super().connection_made(handler, transport)


class MockCloud(Simulator):
    """The simulated cloud, served over HTTP(S) on a real port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        **behaviour: Any,
    ) -> None:
        super().__init__(**behaviour)
        self.host = host
        self.port = port
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
        if content_type == CT_GZIP_JSON:
            headers["Content-Type"] = CT_JSON
            headers["Content-Encoding"] = "gzip"
            payload = gzip.compress(payload)
        return web.Response(status=status, body=payload, headers=headers)

    async def _misbehave(self, request: web.BaseRequest, fault: int, payload: bytes) -> None:
        """The faults no HTTP reply can express, done on the connection itself."""
        transport = request.transport
        if transport is None:
            return
        if fault == RAW_HANG:
            await asyncio.Future()  # until the client gives up or the server stops
        elif fault == RAW_RESET:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        elif fault == RAW_CLOSE:
            transport.close()
        elif fault == RAW_HUGE_LENGTH:
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                            + b"9" * 5000 + b"\r\n\r\n" + payload)
            transport.close()
        elif fault == RAW_TRUNCATED:
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {CT_JSON}\r\nContent-Length: {len(payload)}\r\n\r\n"
            transport.write(head.encode() + payload[: len(payload) // 2])
            # Cut without a TLS close_notify: the client must not take half a body for a whole one.
            await asyncio.sleep(0.05)  # ok: lets the half body leave before the cut
            transport.abort()


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
