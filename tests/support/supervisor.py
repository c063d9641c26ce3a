"""A stand-in for the Home Assistant Supervisor's `GET /services/mqtt` (aiohttp.web, its own thread).

It answers as supervisor/api/services.py does: `{"result": "ok", "data": {...}}` for the add-on's
token, 400 `{"result": "error", "message": "Service not enabled"}` while no broker add-on provides
the service, 401 without the token.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from tests.support.broker import free_port


class FakeSupervisor:
    """`with FakeSupervisor(token, service) as sup:` serves on `sup.url` until the block ends."""

    def __init__(self, token: str, service: dict[str, Any] | None, host: str = "127.0.0.1") -> None:
        self.token = token
        self.service = service  # None: no MQTT service (no broker add-on installed)
        self.host = host
        self.port = free_port()
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fake-supervisor", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _mqtt(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Authorization")))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"result": "error", "message": "Unauthorized"}, status=401)
        if self.service is None:
            return web.json_response({"result": "error", "message": "Service not enabled"}, status=400)
        return web.json_response({"result": "ok", "data": self.service})

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/services/mqtt", self._mqtt)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    def __enter__(self) -> FakeSupervisor:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the fake Supervisor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
