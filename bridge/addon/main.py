"""`python -m bridge.addon [--check]`: what the add-on image runs.

Options from `/data/options.json`, the broker from the Supervisor, the journal (and everything else
the bridge remembers) in `/data`. A missing broker or a bad option is one line on stderr naming
what to fix, and exit 2; `--check` prints the effective config with every secret masked, as
`capture-bridge check-config` does, and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from bridge import __version__
from bridge.addon.options import config_data, in_option_terms, read_options
from bridge.addon.supervisor import OUTSIDE_ADDON, SUPERVISOR_URL, fetch_broker
from bridge.cli import EXIT_CONFIG, journal_problem, run_until_stopped
from bridge.config import Config
from bridge.config.loader import validate_config, with_env_overrides
from bridge.core.errors import ConfigError
from bridge.core.redact import redact
from bridge.infra.logs import setup_logging

log = logging.getLogger("bridge.addon")

# Where the Supervisor puts things; the variables exist for tests and for running the image by hand.
DATA_ENV = "CAPTURE_BRIDGE_ADDON_DATA"  # default /data: options.json and the journal
CONFIG_ENV = "CAPTURE_BRIDGE_ADDON_CONFIG"  # default /config: the add-on's own config folder (addon_config)
SUPERVISOR_ENV = "CAPTURE_BRIDGE_ADDON_SUPERVISOR"  # default http://supervisor
# Above this many devices the start-up line counts them instead of listing them (thousands fit in a file).
LISTED_DEVICES = 20


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    click.echo(f"capture-bridge: {redact.scrub(message)}", err=True)
    sys.exit(code)


def effective_config(environ: dict[str, str]) -> Config:
    """Options + the Supervisor's broker -> the validated Config; ConfigError in the options' terms."""
    data_dir = Path(environ.get(DATA_ENV, "/data"))
    config_dir = Path(environ.get(CONFIG_ENV, "/config"))
    token = environ.get("SUPERVISOR_TOKEN")
    if not token:
        raise ConfigError(OUTSIDE_ADDON)
    redact.add(token)
    options = read_options(data_dir / "options.json")
    for secret in (options.get("password"),):
        if isinstance(secret, str):
            redact.add(secret)
    broker = asyncio.run(fetch_broker(environ.get(SUPERVISOR_ENV, SUPERVISOR_URL), token))
    if broker.password:
        redact.add(broker.password)
    data = with_env_overrides(config_data(options, broker, data_dir, config_dir), environ)
    try:
        return validate_config(data)
    except ConfigError as exc:
        raise ConfigError(in_option_terms(str(exc))) from None


def summary(config: Config) -> dict[str, Any]:
    """The masked config for the start-up log line; a long device list is only counted."""
    masked = config.masked()
    if len(config.devices) > LISTED_DEVICES:
        masked["devices"] = f"{len(config.devices)} devices"
    return masked


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="capture-bridge add-on")
@click.option("--check", is_flag=True, help="Print the effective config (secrets masked) and exit.")
def main(check: bool) -> None:
    """Run capture-bridge as a Home Assistant add-on (options and broker from the Supervisor)."""
    try:
        config = effective_config(dict(os.environ))
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    problem = journal_problem(config)
    if problem is not None:
        _fail(f"config error: {problem} (the add-on's /data must be writable)")
    if check:
        click.echo(json.dumps(config.masked(), indent=2, ensure_ascii=False))
        return
    setup_logging(config.logging.level, config.logging.format)
    log.info("add-on: effective config (secrets masked): %s", json.dumps(summary(config), ensure_ascii=False))
    run_until_stopped(config, in_option_terms)
