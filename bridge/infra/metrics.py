"""Prometheus metrics and the /metrics + /healthz HTTP endpoint.

`Metrics` is the service's `Observer`: its methods run on the asyncio thread
for every command, so each is a dict lookup plus a prometheus_client update.
`MetricsServer` serves the registry from a stdlib ThreadingHTTPServer in a
daemon thread; it never touches the event loop, only the thread-safe registry
and the `healthy()` callable.

/healthz is 503 when the bridge cannot take commands (no broker connection, a
refused subscription); the cloud's status is reported beside it, and never
makes it 503: a restart cannot fix a wrong password or a cloud outage.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bridge import __version__
from bridge.core.errors import ErrorCode

log = logging.getLogger("bridge.metrics")

# The 0.0.4 text format is what generate_latest writes; newer prometheus_client
# versions advertise 1.0.0 as "latest", so name the format we actually serve.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The cloud answers in tens of milliseconds when it refuses, and holds a call
# ~15 s while it waits for the device (read timeout 20 s).
CLOUD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
# A command also waits for its device's earlier captures and for retries (deadline 45 s).
COMMAND_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Health:
    """What /healthz says: `problems` (each one line) make it 503; `cloud` is reported alongside."""

    problems: tuple[str, ...] = ()
    cloud: str = "unknown"

    def body(self) -> dict[str, Any]:
        """The JSON document served."""
        return {"status": "unhealthy" if self.problems else "ok", "mqtt": list(self.problems) or "ok",
                "cloud": self.cloud}


HealthCheck = Callable[[], "bool | Health"]


def _known_outcomes() -> list[tuple[str, str]]:
    # Every (status, error) a final state can carry, so each series exists at 0 from the start
    # and rate() / increase() see the first failure instead of a series appearing out of nowhere.
    outcomes = [("ok", ""), ("busy", ErrorCode.CAMERA_BUSY.value)]
    outcomes += [("error", code.value) for code in ErrorCode if code is not ErrorCode.CAMERA_BUSY]
    return outcomes


class Metrics:
    """The bridge's metrics in a registry of their own (never the process-global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._commands = Counter(
            "capture_bridge_commands",
            "Commands that reached a final state, by status and error.",
            ("status", "error"),
            registry=self.registry,
        )
        self._command_seconds = Histogram(
            "capture_bridge_command_seconds",
            "Seconds from receiving a command to its final state.",
            buckets=COMMAND_BUCKETS,
            registry=self.registry,
        )
        self._cloud_seconds = Histogram(
            "capture_bridge_cloud_call_seconds",
            "Seconds one Instruction call to the cloud took.",
            buckets=CLOUD_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge("capture_bridge_in_flight", "Cloud calls running now.", registry=self.registry)
        self._backlog = Gauge(
            "capture_bridge_backlog", "Commands waiting for a cloud call slot.", registry=self.registry
        )
        self._connected = Gauge(
            "capture_bridge_mqtt_connected", "1 while connected to the MQTT broker, else 0.", registry=self.registry
        )
        self._journal_writable = Gauge(
            "capture_bridge_journal_writable",
            "1 while the command journal can be written, else 0 (commands are then not taken).",
            registry=self.registry,
        )
        self._journal_writable.set(1)
        info = Gauge(
            "capture_bridge_build_info", "The running version (always 1).", ("version",), registry=self.registry
        )
        info.labels(__version__).set(1)
        # .labels() validates and locks on every call; the hot path looks children up here instead.
        self._outcomes: dict[tuple[str, str], Counter] = {key: self._commands.labels(*key) for key in _known_outcomes()}

    def finished(self, status: str, error: str | None, seconds: float) -> None:
        """A command reached its final state `seconds` after it arrived."""
        key = (status, error or "")
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = self._commands.labels(*key)
        child.inc()
        self._command_seconds.observe(seconds)

    def cloud_call(self, seconds: float) -> None:
        """One Instruction call took `seconds`."""
        self._cloud_seconds.observe(seconds)

    def load(self, in_flight: int, backlog: int) -> None:
        """The current number of running cloud calls and waiting commands."""
        self._in_flight.set(in_flight)
        self._backlog.set(backlog)

    def journal_writable(self, writable: bool) -> None:
        """Whether the journal can be written (the bridge takes no commands while it cannot)."""
        self._journal_writable.set(1 if writable else 0)

    def set_connected(self, connected: bool) -> None:
        """Whether the MQTT connection is up."""
        self._connected.set(1 if connected else 0)

    def watch_transport(self, dns_lookups: Callable[[], float], connections: Callable[[], float]) -> None:
        """Expose the cloud transport's own counters, read at scrape time."""
        # Read by the scrape thread: two ints the event loop bumps, no lock needed for a monotonic read.
        dns = Gauge("capture_bridge_cloud_dns_lookups", "DNS lookups of the cloud's host name since start.",
                    registry=self.registry)
        dns.set_function(dns_lookups)
        opened = Gauge("capture_bridge_cloud_connections_opened",
                       "Connections opened to the cloud since start.", registry=self.registry)
        opened.set_function(connections)

    def watch_mqtt(self, waiting: Callable[[], float], held: Callable[[], float]) -> None:
        """Expose the MQTT side's queues, read at scrape time (back-pressure: bridge/mqtt/inbound.py)."""
        queued = Gauge("capture_bridge_mqtt_waiting",
                       "Messages the broker has not acknowledged yet, or that wait for room to be sent.",
                       registry=self.registry)
        queued.set_function(waiting)
        kept = Gauge("capture_bridge_commands_held",
                     "Commands received under back-pressure: not run, not acknowledged yet.", registry=self.registry)
        kept.set_function(held)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


def _handler_class(metrics: Metrics, healthy: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"capture-bridge/{__version__}"

        def do_GET(self) -> None:
            self._respond(body=True)

        def do_HEAD(self) -> None:
            self._respond(body=False)

        def _respond(self, *, body: bool) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                self._send(200, CONTENT_TYPE, metrics.render(), body)
            elif path == "/healthz":
                ok, document = _health(healthy)
                self._send(200 if ok else 503, "application/json", json.dumps(document).encode(), body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n", body)

        def _send(self, status: int, content_type: str, payload: bytes, body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            # Prometheus scrapes every few seconds: an access log on stderr would drown the real logs.
            pass

    return Handler


def _health(healthy: HealthCheck) -> tuple[bool, dict[str, Any]]:
    try:
        result = healthy()
    except Exception:
        # A failing check is an unhealthy bridge, not a crashed endpoint.
        log.exception("health check failed")
        return False, {"status": "unhealthy"}
    if isinstance(result, Health):
        return not result.problems, result.body()
    return bool(result), {"status": "ok" if result else "unhealthy"}


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz (200 or 503) from a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int, healthy: HealthCheck) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._healthy = healthy
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (raises OSError if the port is taken) and serve in the background."""
        server = ThreadingHTTPServer((self._host, self._port), _handler_class(self._metrics, self._healthy))
        server.daemon_threads = True
        self._server = server
        # stop() waits up to one poll interval for the loop to notice; 0.5 s (the default) slows shutdown.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0); the configured one before `start`."""
        if self._server is None:
            return self._port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice or before `start`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
