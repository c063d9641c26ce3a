"""The `capture-bridge` command: the only place that catches everything.

User errors (config, arguments) print one line on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click

from bridge import __version__
from bridge.app import install_signal_handlers, run_bridge
from bridge.bootstrap import make_http, raise_fd_limit
from bridge.config import Config, load_config
from bridge.core import state as states
from bridge.core.command import FIELDS, decode_payload
from bridge.core.errors import BridgeError, ConfigError, InvalidCommand
from bridge.core.intake import Rules, take
from bridge.core.redact import redact
from bridge.core.settings import SettingsStore, parse_settings
from bridge.features.discovery import id_clash
from bridge.infra.cloud import CloudClient
from bridge.infra.logs import setup_logging
from bridge.infra.settings_db import read_choices
from bridge.infra.tls import cloud_context, mqtt_context

EXIT_CONFIG = 2

config_option = click.option(
    "--config",
    "config_path",
    envvar="CAPTURE_BRIDGE_CONFIG",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML config file (env: CAPTURE_BRIDGE_CONFIG); CAPTURE_BRIDGE_<SECTION>__<KEY> overrides keys.",
)


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    click.echo(f"capture-bridge: {redact.scrub(message)}", err=True)
    sys.exit(code)


def _load(config_path: str | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        if config_path is None:
            # Without a file only CAPTURE_BRIDGE_* variables configure it: say what was missed.
            _fail(f"config error: no --config PATH given (nor CAPTURE_BRIDGE_CONFIG), and without one: {exc}")
        _fail(f"config error: {exc}")


def journal_problem(config: Config) -> str | None:
    """Why `run` could not open the journal or the settings file beside it, found without creating anything."""
    paths = [config.journal_file()] if config.bridge.journal else []
    for path in [*paths, config.settings_file()]:  # the settings file is used with the journal off too
        problem = _file_problem(path)
        if problem is not None:
            return f"bridge.journal_path: {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    if path.exists():
        if not path.is_file():
            return f"{path} is not a file"
        try:
            with path.open("ab"):
                return None
        except OSError as exc:
            return f"cannot open {path}: {exc.strerror}"
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a directory"
    try:
        # A real try, not os.access: root passes every access() check, even on /proc.
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capture-bridge")
def main() -> None:
    """Bridge MQTT capture commands to the vendor cloud's ActiveNewPhotograph instruction."""


@main.command()
@config_option
@click.option("--log-format", type=click.Choice(["human", "json"]), default=None, help="Overrides logging.format.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default=None, help="Overrides logging.level.")
def run(config_path: str | None, log_format: str | None, log_level: str | None) -> None:
    """Run the bridge until SIGTERM or SIGINT."""
    config = _load(config_path)
    setup_logging((log_level or config.logging.level).upper(), log_format or config.logging.format)
    run_until_stopped(config)


def run_until_stopped(config: Config, explain: Callable[[str], str] = str) -> None:
    """The bridge until SIGTERM or SIGINT; a problem found at start is one line (`explain` words it)."""

    async def serve() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await run_bridge(config, stop)

    try:
        run_event_loop(serve())
    except ConfigError as exc:
        _fail(f"config error: {explain(str(exc))}")
    except OSError as exc:
        _fail(f"cannot start: {exc}", 1)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where installed: connects, writes and wake-ups cost about half of asyncio's
    (measured: bridge CPU 0.39 -> 0.28 s for a burst of 1000 captures); else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _option_value(value: str | None) -> Any:
    # Numbers typed on the command line arrive as text; the command model wants ints.
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


@main.command()
@click.argument("device")
@config_option
@click.option("--camera", help='0/"main" or 1/"top".')
@click.option("--type", "kind", help="1/photo, 2/video, 3/photo+video.")
@click.option("--count", help="Number of photos.")
@click.option("--duration", help="Video length in seconds.")
@click.option("--resolution", help="0-3 or 360p/480p/720p/1080p.")
@click.option("--interval", help="Seconds between photos.")
@click.option("--request-id", help="Echoed in the state.")
@click.option("--payload", help="A whole command as on capture/set (JSON); the options above override its keys.")
def capture(device: str, config_path: str | None, camera: str | None, kind: str | None, count: str | None,
            duration: str | None, resolution: str | None, interval: str | None, request_id: str | None,
            payload: str | None) -> None:
    """Send one capture straight to the cloud and print the state; exit 0 only when it is ok."""
    config = _load(config_path)
    setup_logging("WARNING", config.logging.format)
    raw = {"camera": camera, "type": kind, "count": count, "duration": duration,
           "resolution": resolution, "interval": interval}
    options: dict[str, Any] = {k: _option_value(v) for k, v in raw.items() if v is not None}
    if request_id is not None:
        options["request_id"] = request_id
    try:
        state = asyncio.run(_capture_once(config, device, payload, options))
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    click.echo(json.dumps(state, ensure_ascii=False))
    sys.exit(0 if state["status"] == states.OK else 1)


def _command_bytes(payload: str | None, options: dict[str, Any], max_bytes: int) -> bytes:
    """`--payload` with the options over its keys (in either spelling), as on capture/set."""
    try:
        data = decode_payload(payload.encode(), max_bytes) if payload else {}
    except InvalidCommand:
        return payload.encode() if payload else b""  # intake answers it invalid_payload
    for key, value in options.items():
        data.pop(FIELDS.get(key, key), None)
        data[key] = value
    return json.dumps(data).encode()


async def _capture_once(
    config: Config, device: str, payload: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    # What is left out comes from the settings users chose (the bridge's settings file, read only),
    # then the config's per-device defaults, as for a command over MQTT.
    store = SettingsStore(config.guids(), {name: entry.defaults for name, entry in config.devices.items()},
                          config.limits(), config.bridge.guid_topic_ids)
    for key, choices in read_choices(config.settings_file()).items():
        kept: dict[str, Any] = {}
        for field, value in choices.items():
            with contextlib.suppress(InvalidCommand):  # a field this config's limits refuse is left out
                kept.update(parse_settings({field: value}, store.limits))
        store.set(key, kept)
    rules = Rules(config.guids(), config.bridge.guid_topic_ids, config.limits(), config.bridge.max_payload_bytes,
                  store.current)
    taken = take(device, _command_bytes(payload, options, config.bridge.max_payload_bytes), rules)
    if taken.error is not None or taken.capture is None or taken.ctx.asset_guid is None:
        return states.error_state(taken.ctx, taken.error or InvalidCommand("nothing to send"))
    http = make_http(config.cloud, 4)
    try:
        reply = await CloudClient(http, config.cloud).capture(taken.ctx.asset_guid, taken.capture.api_params())
        return states.reply_state(taken.ctx, reply)
    except BridgeError as exc:
        return states.error_state(taken.ctx, exc)
    finally:
        await http.aclose()


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the config and print it, with every secret masked."""
    config = _load(config_path)
    problem = journal_problem(config) or (id_clash(config) if config.homeassistant.enabled else None)
    if problem is not None:
        _fail(f"config error: {problem}")
    try:
        # The same files `run` reads at start (CA bundles, client certificate).
        if config.mqtt.tls:
            mqtt_context(config.mqtt)
        cloud_context(config.cloud)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    # JSON: readable, and parseable by both JSON and YAML tools.
    click.echo(json.dumps(config.masked(), indent=2, ensure_ascii=False))


@main.command("mock-cloud")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8092, show_default=True, type=click.IntRange(0, 65535))
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(0), help="Seconds per Instruction.")
@click.option("--any-device", "default_behaviour", flag_value="ok", default=None,
              help="Answer ok for any GUID that is not a demo device (the demo GUIDs keep their fixed outcomes); "
                   "default: other GUIDs get 106.")
@click.option("--token", default=None, help="A fixed FTokenID the mock accepts (with --strict).")
@click.option("--strict", is_flag=True, help="Only user demo / demo-password and issued tokens (default: any).")
@click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
              help="Serve HTTPS with this certificate (PEM; may hold the key too).")
@click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="Private key for --tls-cert (PEM).")
@click.option("--idle-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds before an idle keep-alive connection is closed, as a real server does.")
def mock_cloud(host: str, port: int, latency: float, default_behaviour: str | None, token: str | None,
               strict: bool, tls_cert: str | None, tls_key: str | None, idle_timeout: float) -> None:
    """Run a local simulator of the cloud API (login + Instruction)."""
    from bridge.sim.server import run_mock_cloud

    if tls_key is not None and tls_cert is None:
        _fail("--tls-key needs --tls-cert")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not os.access(path, os.R_OK):
            _fail(f"{flag}: cannot read {path}")
    raise_fd_limit(65536)  # one socket per simulated in-flight call
    try:
        run_mock_cloud(host, port, latency, default_behaviour or "unknown", token, strict,
                       tls_cert=tls_cert, tls_key=tls_key, idle_timeout=idle_timeout)
    except ssl.SSLError:
        _fail("--tls-cert/--tls-key: not a PEM certificate and its private key")
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        _fail(f"cannot listen on {host}:{port} (--host/--port): {reason}", 1)
