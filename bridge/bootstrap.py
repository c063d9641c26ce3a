"""Bootstrap: builds the object graph from the config, in dependency order, and returns the parts.

The bus is built first and empty; everything that must call something built later goes through
it, so no part needs another before it exists. The feature list is the one registration point.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass

from bridge import __version__
from bridge.config import CloudConfig, Config
from bridge.core.errors import ConfigError
from bridge.core.settings import SettingsStore, StoreError
from bridge.features.availability import Availability, last_will
from bridge.features.base import Bus, Feature, register
from bridge.features.homeassistant import HomeAssistant
from bridge.features.info import BridgeInfo
from bridge.features.legacy_settings import LegacySettings
from bridge.features.results import ResultTopics
from bridge.features.settings import DeviceSettings
from bridge.features.startup import StartupGate
from bridge.infra.cloud import CloudClient, LoginCheck
from bridge.infra.journal import Journal, JournalError, written_by_an_older_bridge
from bridge.infra.metrics import Metrics
from bridge.infra.settings_db import SettingsDb
from bridge.infra.tls import cloud_context
from bridge.infra.transport import AiohttpTransport
from bridge.mqtt.adapter import MqttAdapter
from bridge.service.capture import CaptureService
from bridge.service.ports import ObservedPublisher, StatePublisher


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything the app starts and stops."""

    config: Config
    http: AiohttpTransport
    journal: Journal | None
    settings_db: SettingsDb
    metrics: Metrics
    login: LoginCheck
    adapter: MqttAdapter
    service: CaptureService
    gate: StartupGate
    features: tuple[Feature, ...]


def make_http(config: CloudConfig, max_connections: int) -> AiohttpTransport:
    """The HTTP transport to the cloud, pooled to match the in-flight limit."""
    return AiohttpTransport(
        config.base_url,
        max_connections=max_connections,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        ssl_context=cloud_context(config),
        user_agent=f"capture-bridge/{__version__}",
        keepalive_timeout=config.keepalive_timeout,
    )


def open_journal(config: Config) -> Journal | None:
    """The command journal, or a ConfigError naming `bridge.journal_path` (one line, exit 2)."""
    if not config.bridge.journal:
        return None
    try:
        return Journal(config.journal_file())
    except JournalError as exc:
        raise ConfigError(f"bridge.journal_path: {exc}") from None


def open_stores(config: Config) -> tuple[Journal | None, SettingsDb]:
    """The journal and the settings store beside it; a settings store created on an upgrade imports once."""
    upgrade = written_by_an_older_bridge(config.journal_file())  # before opening creates the file
    journal = open_journal(config)
    try:
        db = SettingsDb(config.settings_file(), upgrade=upgrade)
        if journal is not None:
            journal.mark_ours()  # only now: a start that failed before this still sees the upgrade
    except (StoreError, JournalError) as exc:
        raise ConfigError(f"bridge.journal_path: {exc}") from None
    return journal, db


def raise_fd_limit(wanted: int) -> None:
    """Each in-flight call holds a socket: lift the soft open-files limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def features(config: Config, store: SettingsStore, db: SettingsDb, adapter: MqttAdapter, service: CaptureService,
             gate: StartupGate) -> tuple[Feature, ...]:
    """Every feature, in the order they subscribe and hear events: add a new one here."""
    settings = DeviceSettings(config, adapter.publish, store, db)
    found: list[Feature] = [
        gate,
        Availability(config, adapter.publish, adapter.session),
        settings,
        LegacySettings(config, adapter.publish, settings, db, lambda: gate.synced),
        BridgeInfo(config, adapter.publish, service, adapter),
    ]
    if config.homeassistant.enabled:
        found.append(HomeAssistant(config, adapter.publish))
    if config.mqtt.result_topics:
        found.append(ResultTopics(config, adapter.publish))
    return tuple(found)


def bootstrap(config: Config) -> Parts:
    """Build the bridge for `config` (nothing runs yet)."""
    bus = Bus()
    http = make_http(config.cloud, config.bridge.max_in_flight)
    cloud = CloudClient(http, config.cloud)
    journal, settings_db = open_stores(config)
    metrics = Metrics()
    metrics.watch_transport(lambda: http.dns_lookups, lambda: http.connections_opened)
    store = SettingsStore(config.guids(), {name: entry.defaults for name, entry in config.devices.items()},
                          config.limits(), config.bridge.guid_topic_ids)
    ha = config.homeassistant
    adapter = MqttAdapter(
        config.mqtt,
        bus.command,
        routes=bus.routes,
        on_connected=bus.connected,
        on_disconnected=bus.disconnected,
        on_listening=bus.listening,
        will=last_will(config),
        on_retained_command=bus.retained_command,
        before_ack=bus.commit,
        max_payload_bytes=config.bridge.max_payload_bytes,
        owned_prefixes=(ha.prefix,) if ha.prefix else (),
    )
    bus.on_connected(lambda: metrics.set_connected(True))
    bus.on_disconnected(lambda: metrics.set_connected(False))
    metrics.watch_mqtt(lambda: adapter.waiting_publishes, lambda: adapter.held_commands)
    publisher: StatePublisher = ObservedPublisher(adapter, bus.state)
    service = CaptureService(
        cloud,
        publisher,
        devices=config.guids(),
        guid_topic_ids=config.bridge.guid_topic_ids,
        limits=config.limits(),
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
    bus.commit_with(service.flush)
    gate = StartupGate(config, service, adapter.publish)
    registered = features(config, store, settings_db, adapter, service, gate)
    register(bus, registered)
    return Parts(config, http, journal, settings_db, metrics, LoginCheck(cloud, config.cloud), adapter, service,
                 gate, registered)
