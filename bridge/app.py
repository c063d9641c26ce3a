"""Bootstrap: wires the real adapters (paho, HTTP, SQLite) to the service and runs it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import resource
import signal
import ssl
import time
from collections.abc import Callable

from bridge import __version__
from bridge.config import CloudConfig, Config
from bridge.core import topics
from bridge.core.command import Limits
from bridge.core.errors import BridgeError, ConfigError, ErrorCode
from bridge.core.settings import SettingsStore
from bridge.features import discovery
from bridge.features.companion import Companion
from bridge.infra.cloud import CloudClient
from bridge.infra.journal import Journal, JournalEntry, JournalError
from bridge.infra.metrics import Health, Metrics, MetricsServer
from bridge.infra.transport import AiohttpTransport
from bridge.mqtt.adapter import MqttAdapter
from bridge.service.capture import CaptureService, Command, StatePublisher

log = logging.getLogger("bridge")

# How long commands wait at start for the retained settings before running anyway.
SYNC_TIMEOUT = 10.0
# How often captures in flight and backlog are published on `<base>/bridge/info` (when changed).
INFO_INTERVAL = 5.0


class ObservedPublisher:
    """The adapter's publish_state, and every state also shown to `observe` (terminal numbers for HA)."""

    def __init__(self, inner: StatePublisher, observe: Callable[[str, bytes], None]) -> None:
        self._inner = inner
        self._observe = observe

    def publish_state(
        self,
        device: str,
        payload: bytes,
        *,
        retain: bool = True,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        on_acked: Callable[[], None] | None = None,
    ) -> None:
        """Publish, then observe."""
        self._inner.publish_state(device, payload, retain=retain, response_topic=response_topic,
                                  correlation=correlation, on_acked=on_acked)
        try:
            self._observe(device, payload)
        except Exception:  # a bug here must not lose the state's acknowledgement path
            log.exception("observing a state failed")


def cloud_ssl_context(config: CloudConfig) -> ssl.SSLContext | None:
    """Verified HTTPS by default, with an optional CA bundle; `verify_tls: false` to switch checks off."""
    if not config.base_url.startswith("https"):
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    except FileNotFoundError:
        raise ConfigError(f"cloud.ca_file: no such file: {config.ca_file}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cloud.ca_file: cannot use {config.ca_file} as a CA bundle: "
                          f"{getattr(exc, 'reason', None) or exc.strerror or exc}") from None
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_http(config: CloudConfig, max_connections: int) -> AiohttpTransport:
    """The HTTP transport to the cloud, pooled to match the in-flight limit."""
    return AiohttpTransport(
        config.base_url,
        max_connections=max_connections,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        ssl_context=cloud_ssl_context(config),
        user_agent=f"capture-bridge/{__version__}",
        keepalive_timeout=config.keepalive_timeout,
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


class Announcer:
    """Home Assistant discovery, announced again on request: coalesced and rate-limited.

    One announcement is in flight at a time (until the broker has acknowledged every message of
    it); requests meanwhile collapse into one more afterwards, and two start at least
    `min_interval` seconds apart. A flapping `homeassistant/status` cannot flood the broker
    or the bridge's publish queue, and the last request is always answered.

    `announce` publishes through `publish` below (the Companion's publish callable), which
    counts what an announcement sends and hands it to `send` with an ack hook.
    """

    def __init__(
        self,
        announce: Callable[[], None],
        send: Callable[..., bool],
        *,
        min_interval: float = 5.0,
        give_up: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._announce = announce
        self._send = send
        self._firing = False
        self._min_interval = min_interval
        self._give_up = give_up
        self._clock = clock
        self._in_flight = 0
        self._again = False
        self._started = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self.count = 0

    def request(self) -> None:
        """Announce now, or as soon as the one in flight is through and the interval has passed."""
        if self._timer is not None:
            return
        now = self._clock()
        # Acks lost with a connection are redelivered by paho; the deadline is a safety net only.
        if self._in_flight and now - self._started < self._give_up:
            self._again = True
            return
        wait = self._started + self._min_interval - now
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self._fire)
            return
        self._fire()

    def _fire(self) -> None:
        self._timer = None
        self._again = False
        self._started = self._clock()
        self.count += 1
        self._in_flight = 0  # a given-up announcement's late acks cannot go below zero
        self._firing = True
        try:
            self._announce()
        finally:
            self._firing = False
        if not self._in_flight and self._again:
            self._again = False
            self.request()

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish at QoS 1; a message of an announcement counts until the broker has it."""
        on_acked = None
        if self._firing:
            self._in_flight += 1
            on_acked = self._acked
        # bulk: an announcement is bounded (one at a time) and must not hold commands back.
        if not self._send(topic, payload, qos=1, retain=retain, on_acked=on_acked, bulk=self._firing) \
                and on_acked is not None:
            self._acked()

    def _acked(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        if not self._in_flight and self._again and not self._firing:
            self._again = False
            self.request()

    def cancel(self) -> None:
        """Forget a scheduled announcement (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _malloc_trim() -> Callable[[], None] | None:
    # glibc keeps freed heap memory for reuse; after a burst the bridge holds ~30-40 MB it no longer
    # uses (measured, 30,000-command flood). No library exposes malloc_trim; ctypes is the way.
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is None:
        return None

    def release() -> None:
        trim(0)

    return release


async def give_back_memory(service: CaptureService, interval: float = 5.0) -> None:
    """Once a burst is over (nothing running or waiting), return freed heap memory to the OS."""
    trim = _malloc_trim()
    if trim is None:
        return
    trimmed_at = service.finished
    while True:
        await asyncio.sleep(interval)
        if service.finished != trimmed_at and not service.in_flight and not service.backlog:
            trimmed_at = service.finished
            trim()


def open_journal(config: Config) -> Journal | None:
    """The command journal, or a ConfigError naming `bridge.journal_path` (one line, exit 2)."""
    if not config.bridge.journal:
        return None
    try:
        return Journal(config.journal_file())
    except JournalError as exc:
        raise ConfigError(f"bridge.journal_path: {exc}") from None


async def run_bridge(config: Config, stop: asyncio.Event) -> None:
    """Run until `stop` is set, then shut down gracefully."""
    raise_fd_limit(config.bridge.max_in_flight + 256)
    http = make_http(config.cloud, config.bridge.max_in_flight)
    cloud = CloudClient(http, config.cloud)
    journal = open_journal(config)
    devices = {name: entry.guid for name, entry in config.devices.items()}

    metrics = Metrics()
    metrics.watch_transport(lambda: http.dns_lookups, lambda: http.connections_opened)
    cloud_status = "not checked yet"
    base = config.mqtt.base_topic
    store = SettingsStore({name: entry.defaults for name, entry in config.devices.items()}, config.limits())
    companion = Companion(config, lambda topic, payload, retain: announcer.publish(topic, payload, retain), store)
    # Discovery goes out through the announcer: however often HA says `online`, one at a time.
    announcer = Announcer(companion.announce, lambda *args, **kw: adapter.publish(*args, **kw))

    def on_homeassistant_status(payload: bytes) -> None:
        if payload.strip() == b"online":
            announcer.request()

    loop = asyncio.get_running_loop()
    # Commands wait for the retained settings (see bridge/companion.py); None once they are read.
    # Each is journaled when it arrives, because its PUBACK goes out with the next journal commit.
    held: list[tuple[Command, int | None]] | None = []

    def on_command(command: Command) -> None:
        if held is None:
            service.submit(command)
        else:
            held.append((command, service.record(command)))

    def on_retained_command(device: str, payload: bytes) -> None:
        # On 3.1.1 (and brokers that do not keep the flag) a retained command published while we
        # were down reaches our resumed session as a live message, before the retained copy our
        # SUBSCRIBE brings. Both arrive while commands are held at start: the live copy is the
        # same stale command, so it is dropped too.
        nonlocal held
        if not held:
            return
        kept = [(c, jid) for c, jid in held if c.device != device or c.payload != payload]
        for c, jid in held:
            if c.device == device and c.payload == payload:
                service.discard(jid)
        if len(kept) < len(held):
            log.warning("dropped %d queued copy(ies) of the retained command on %s: retained commands are never "
                        "executed (the broker queued it for our session without its retain flag)",
                        len(held) - len(kept), topics.command_topic(base, device), extra={"device": device})
            held = kept

    # Commands the journal took back from the last run: they wait for the settings as well.
    replayed: list[JournalEntry] = []

    def on_synced(_payload: bytes = b"") -> None:
        nonlocal held
        if held is None:
            return
        companion.on_synced()
        waiting, held = held, None
        if replayed:
            service.replay(replayed)  # older than anything held: first
            replayed.clear()
        for command, journal_id in waiting:
            service.submit(command, journal_id)

    def sync_overdue() -> None:
        if held is not None:
            log.warning("the broker did not echo %s within %.0fs (down? ACL?); running commands with the "
                        "settings known", sync_topic, SYNC_TIMEOUT)
            on_synced()

    sync_topic = topics.bridge_sync_topic(base, config.mqtt.client_id)

    def on_connected() -> None:
        metrics.set_connected(True)
        if held is not None:
            adapter.publish(sync_topic, b"sync", qos=1)
            loop.call_later(SYNC_TIMEOUT, sync_overdue)
        else:
            companion.on_reconnected()
        companion.publish_info(service.in_flight, service.backlog, force=True)
        announcer.request()

    handlers: dict[str, Callable[[bytes], None]] = {
        topics.bridge_settings_topic(base): companion.on_settings_snapshot,
        sync_topic: on_synced,
    }
    filter_handlers: dict[str, Callable[[str, bytes, bool], None]] = {
        topics.settings_set_filter(base): companion.on_settings_set,
    }
    if config.homeassistant.enabled:
        handlers[config.homeassistant.status_topic] = on_homeassistant_status
        filter_handlers[discovery.cleanup_filter(config.homeassistant.prefix)] = companion.on_discovery_config

    service: CaptureService
    adapter = MqttAdapter(
        config.mqtt,
        on_command,
        on_connected=on_connected,
        on_disconnected=lambda: metrics.set_connected(False),
        on_retained_command=on_retained_command,
        before_ack=lambda: service.flush(),
        handlers=handlers,
        filter_handlers=filter_handlers,
        max_payload_bytes=config.bridge.max_payload_bytes,
        discovery_prefix=config.homeassistant.prefix,
    )
    metrics.watch_mqtt(lambda: adapter.waiting_publishes, lambda: adapter.held_commands)
    publisher: StatePublisher = adapter
    if config.homeassistant.enabled and config.devices:
        publisher = ObservedPublisher(adapter, companion.observe_state)
    service = CaptureService(
        cloud,
        publisher,
        devices=devices,
        guid_topic_ids=config.bridge.guid_topic_ids,
        limits=limits_of(config),
        max_payload_bytes=config.bridge.max_payload_bytes,
        max_in_flight=config.bridge.max_in_flight,
        max_backlog=config.bridge.max_backlog,
        publish_pending=config.pending_states(),
        # A shared-group member may not come back soon: what reaches it while stopping runs now.
        park_when_closed=config.mqtt.shared_group is None,
        journal=journal,
        dedupe_window=config.bridge.dedupe_window,
        observer=metrics,
        defaults_for=store.current,
        on_journal_writable=adapter.resume_acks,
    )

    async def publish_info_now_and_then() -> None:
        while True:
            await asyncio.sleep(INFO_INTERVAL)
            if adapter.connected:
                companion.publish_info(service.in_flight, service.backlog)

    server: MetricsServer | None = None
    if config.metrics.port is not None:
        # Unhealthy while commands cannot be taken: broker gone or deaf, or the journal cannot be written.
        def health() -> Health:
            problems = adapter.health()
            if not service.journal_ok:
                problems.append("the journal cannot be written (bridge.journal_path)")
            return Health(tuple(problems), cloud_status)

        server = MetricsServer(metrics, config.metrics.host, config.metrics.port, healthy=health)
        try:
            server.start()
        except OSError as exc:
            raise ConfigError(f"metrics.port: cannot listen on {config.metrics.host}:{config.metrics.port}: "
                              f"{exc.strerror or exc} (choose a free metrics.port, or null for none)") from None
        log.info("metrics on http://%s:%d/metrics, health on /healthz", config.metrics.host, server.port)
    log.info("capture-bridge %s starting: broker %s:%d, cloud %s, %d configured device(s)",
             __version__, config.mqtt.host, config.mqtt.port, config.cloud.base_url, len(devices))
    if journal is not None:
        try:
            entries = journal.unfinished()
        except JournalError as exc:
            raise ConfigError(f"bridge.journal_path: {exc}") from None
        replayed.extend(entries)
    # Without a broker (or the marker) for that long, run them with the settings known.
    loop.call_later(SYNC_TIMEOUT, sync_overdue)
    mqtt_task = asyncio.create_task(adapter.run())
    info_task = asyncio.create_task(publish_info_now_and_then())
    watch_task = asyncio.create_task(service.watch_journal())
    trim_task = asyncio.create_task(give_back_memory(service))

    async def check_cloud() -> None:
        # Wrong credentials are found now, not at the first capture; a failure is one ERROR, and the
        # login is tried again in the background (and by every capture) until it works.
        nonlocal cloud_status
        if config.cloud.token is not None or not cloud.can_login:
            # A fixed token is used as it is (there is no call to check it without a capture).
            cloud_status = "fixed token (checked by the first capture)"
            return
        retry, said = 60.0, False
        while True:
            try:
                await cloud.fresh_token(None)
            except BridgeError as exc:
                cloud_status = f"{exc.code.value}: {exc}"
                if not said:
                    said = True
                    hint = "check cloud.username and cloud.password" if exc.code is ErrorCode.LOGIN_FAILED \
                        else "check cloud.base_url"
                    log.error("cloud login as %s failed: %s (%s); still running, trying again in %.0fs",
                              config.cloud.username, exc, hint, retry)
            else:
                cloud_status = f"login ok as {config.cloud.username}"
                return
            await asyncio.sleep(retry)
            retry = min(retry * 2, 900.0)

    cloud_task = asyncio.create_task(check_cloud())
    try:
        await stop.wait()
    finally:
        cloud_task.cancel()
        log.info("shutting down: no new commands, waiting up to %.0fs for %d running capture(s)",
                 config.bridge.shutdown_timeout, service.in_flight + service.backlog)
        adapter.stop_intake()
        if held:
            # Already acknowledged to the broker: hand them to the service (and its journal) now.
            on_synced()
        unfinished = await service.drain(config.bridge.shutdown_timeout)
        if unfinished:
            log.warning("%d capture(s) did not finish in time; the journal keeps them for the next start",
                        unfinished)
        info_task.cancel()
        announcer.cancel()
        await adapter.close()
        for task in (mqtt_task, watch_task, trim_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        service.flush()
        log.info("cloud transport: %d connection(s) opened, %d DNS lookup(s)", http.connections_opened,
                 http.dns_lookups)
        await http.aclose()
        if server is not None:
            server.stop()
        if journal is not None:
            try:
                journal.close()
            except JournalError as exc:
                # Nothing is lost: commands whose row is not durable were never acknowledged.
                log.error("journal %s could not be written at shutdown (%s); unacknowledged commands stay"
                          " with the broker", journal.path, exc)
        log.info("stopped")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
