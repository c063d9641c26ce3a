"""The running bridge: named start-up and shutdown steps over the parts `bootstrap` built."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from bridge import __version__
from bridge.bootstrap import Parts, bootstrap, raise_fd_limit
from bridge.config import Config
from bridge.core.errors import ConfigError
from bridge.core.settings import StoreError
from bridge.infra.journal import JournalError
from bridge.infra.memory import give_back_memory
from bridge.infra.metrics import Health, MetricsServer

log = logging.getLogger("bridge")


class App:
    """Start, wait, stop: each step a method, in the order it runs."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._server: MetricsServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._mqtt: asyncio.Task[None] | None = None
        self._login: asyncio.Task[None] | None = None

    # --- start-up -------------------------------------------------------------------

    async def start(self) -> None:
        """Metrics server, journal take-back, features, MQTT, background work."""
        self._serve_metrics()
        config = self.parts.config
        log.info("capture-bridge %s starting: broker %s:%d, cloud %s, %d configured device(s)",
                 __version__, config.mqtt.host, config.mqtt.port, config.cloud.base_url, len(config.devices))
        self._take_back_journal()
        for feature in self.parts.features:
            feature.start()
        self._mqtt = asyncio.create_task(self.parts.adapter.run())
        self._login = asyncio.create_task(self.parts.login.run())
        self._tasks = [
            asyncio.create_task(self.parts.service.watch_journal()),
            asyncio.create_task(give_back_memory(self.parts.service)),
        ]

    def _health(self) -> Health:
        # Unhealthy while commands cannot be taken: broker gone or deaf, or the journal cannot be written.
        problems = self.parts.adapter.health()
        if not self.parts.service.journal_ok:
            problems.append("the journal cannot be written (bridge.journal_path)")
        if not self.parts.settings_db.ok:  # nothing is acknowledged meanwhile
            problems.append("the settings store cannot be written (bridge.journal_path)")
        return Health(tuple(problems), self.parts.login.status)

    def _serve_metrics(self) -> None:
        metrics = self.parts.config.metrics
        if metrics.port is None:
            return
        self._server = MetricsServer(self.parts.metrics, metrics.host, metrics.port, healthy=self._health)
        try:
            self._server.start()
        except OSError as exc:
            raise ConfigError(f"metrics.port: cannot listen on {metrics.host}:{metrics.port}: "
                              f"{exc.strerror or exc} (choose a free metrics.port, or null for none)") from None
        log.info("metrics on http://%s:%d/metrics, health on /healthz", metrics.host, self._server.port)

    def _take_back_journal(self) -> None:
        journal = self.parts.journal
        if journal is None:
            return
        try:
            entries = journal.unfinished()
        except JournalError as exc:
            raise ConfigError(f"bridge.journal_path: {exc}") from None
        self.parts.gate.take_back(entries)

    # --- shutdown -------------------------------------------------------------------

    async def stop(self) -> None:
        """No new commands, running captures finish, the broker gets everything, then close."""
        if self._login is not None:
            self._login.cancel()
        await self._drain()
        for feature in self.parts.features:
            feature.stop()
        await self.parts.adapter.close()
        await self._cancel_tasks()
        self.parts.service.flush()
        http = self.parts.http
        log.info("cloud transport: %d connection(s) opened, %d DNS lookup(s)", http.connections_opened,
                 http.dns_lookups)
        await http.aclose()
        if self._server is not None:
            self._server.stop()
        self._close_journal()
        self._close_settings()
        log.info("stopped")

    async def _drain(self) -> None:
        parts = self.parts
        timeout = parts.config.bridge.shutdown_timeout
        log.info("shutting down: no new commands, waiting up to %.0fs for %d running capture(s)",
                 timeout, parts.service.in_flight + parts.service.backlog)
        parts.adapter.stop_intake()
        parts.gate.stop()  # what it holds was acknowledged: the service (and its journal) takes it now
        unfinished = await parts.service.drain(timeout)
        if unfinished:
            log.warning("%d capture(s) did not finish in time; the journal keeps them for the next start",
                        unfinished)

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in (self._mqtt, self._login, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _close_journal(self) -> None:
        journal = self.parts.journal
        if journal is None:
            return
        try:
            journal.close()
        except JournalError as exc:
            # Nothing is lost: commands whose row is not durable were never acknowledged.
            log.error("journal %s could not be written at shutdown (%s); unacknowledged commands stay"
                      " with the broker", journal.path, exc)


    def _close_settings(self) -> None:
        db = self.parts.settings_db
        try:
            db.close()
        except StoreError as exc:
            # Acknowledged changes were committed before their PUBACK; what is left was never acknowledged.
            log.error("settings store %s could not be written at shutdown (%s)", db.path, exc)


async def run_bridge(config: Config, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then shut down gracefully."""
    raise_fd_limit(config.bridge.max_in_flight + 256)
    app = App(bootstrap(config))
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.stop()


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
