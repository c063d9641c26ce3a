"""Bootstrap: wires the real adapters (paho, HTTP, SQLite) to the service and runs it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import ssl

from bridge import __version__, discovery
from bridge.cloud import CloudClient
from bridge.command import Limits
from bridge.config import CloudConfig, Config
from bridge.http import HttpClient
from bridge.journal import Journal
from bridge.metrics import Metrics, MetricsServer
from bridge.mqtt import MqttAdapter
from bridge.service import CaptureService

log = logging.getLogger("bridge")


def cloud_ssl_context(config: CloudConfig) -> ssl.SSLContext | None:
    """Verified HTTPS by default, with an optional CA bundle; `verify_tls: false` to switch checks off."""
    if not config.base_url.startswith("https"):
        return None
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_http(config: CloudConfig, max_connections: int) -> HttpClient:
    """The HTTP transport to the cloud, pooled to match the in-flight limit."""
    return HttpClient(
        config.base_url,
        max_connections=max_connections,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        ssl_context=cloud_ssl_context(config),
        user_agent=f"capture-bridge/{__version__}",
    )


def limits_of(config: Config) -> Limits:
    """The command limits from `bridge.max_*`."""
    b = config.bridge
    return Limits(max_count=b.max_count, max_duration=b.max_duration, max_interval=b.max_interval)


def raise_fd_limit(wanted: int) -> None:
    """Each in-flight call holds a socket: lift the soft open-files limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def run_bridge(config: Config, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then shut down gracefully."""
    raise_fd_limit(config.bridge.max_in_flight + 256)
    http = make_http(config.cloud, config.bridge.max_in_flight)
    cloud = CloudClient(http, config.cloud)
    journal = Journal(config.journal_file()) if config.bridge.journal else None
    devices = {name: entry.guid for name, entry in config.devices.items()}

    metrics = Metrics()
    announcements = discovery.discovery_messages(config)

    def on_connected() -> None:
        metrics.set_connected(True)
        announce()

    def announce() -> None:
        for topic, payload in announcements:
            adapter.publish(topic, payload, qos=1, retain=True)

    def on_homeassistant_status(payload: bytes) -> None:
        # Home Assistant restarted and forgot its entities: announce them again.
        if payload.strip() == b"online":
            announce()

    service: CaptureService
    adapter = MqttAdapter(
        config.mqtt,
        lambda command: service.submit(command),
        on_connected=on_connected,
        on_disconnected=lambda: metrics.set_connected(False),
        before_ack=lambda: service.flush(),
        handlers={config.homeassistant.status_topic: on_homeassistant_status} if announcements else None,
    )
    service = CaptureService(
        cloud,
        adapter,
        devices=devices,
        guid_topic_ids=config.bridge.guid_topic_ids,
        limits=limits_of(config),
        max_payload_bytes=config.bridge.max_payload_bytes,
        max_in_flight=config.bridge.max_in_flight,
        max_backlog=config.bridge.max_backlog,
        publish_pending=config.bridge.publish_pending,
        # A shared-group member may not come back soon: what reaches it while stopping runs now.
        park_when_closed=config.mqtt.shared_group is None,
        journal=journal,
        dedupe_window=config.bridge.dedupe_window,
        observer=metrics,
    )
    server: MetricsServer | None = None
    if config.metrics.port is not None:
        server = MetricsServer(metrics, config.metrics.host, config.metrics.port, healthy=lambda: adapter.connected)
        server.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", config.metrics.host, server.port)
    log.info("capture-bridge %s starting: broker %s:%d, cloud %s, %d configured device(s)",
             __version__, config.mqtt.host, config.mqtt.port, config.cloud.base_url, len(devices))
    if journal is not None:
        service.replay(journal.unfinished())
    mqtt_task = asyncio.create_task(adapter.run())
    try:
        await stop.wait()
    finally:
        log.info("shutting down: no new commands, waiting up to %.0fs for %d running capture(s)",
                 config.bridge.shutdown_timeout, service.in_flight + service.backlog)
        adapter.stop_intake()
        unfinished = await service.drain(config.bridge.shutdown_timeout)
        if unfinished:
            log.warning("%d capture(s) did not finish in time; the journal keeps them for the next start",
                        unfinished)
        await adapter.close()
        mqtt_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mqtt_task
        service.flush()
        await http.aclose()
        if journal is not None:
            journal.close()
        if server is not None:
            server.stop()
        log.info("stopped")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
