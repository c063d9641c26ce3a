"""Loading: the YAML file, then `CAPTURE_BRIDGE_<SECTION>__<KEY>` overrides, then validation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.config.models import Config
from bridge.core.errors import ConfigError

ENV_PREFIX = "CAPTURE_BRIDGE_"


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    overrides = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"environment variable {name}: empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        # Secrets and ids stay text even when they look like numbers.
        if path[-1] in ("password", "token", "username", "client_id") and value is not None:
            value = raw
        overrides.append((path, value))
    return overrides


def _apply(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "string_type" and isinstance(err.get("input"), int | float | bool):
        # YAML reads `password: 123456` as a number and `yes` as true: the fix is quotes.
        msg = f"must be text: quote it in the YAML ({where.rsplit('.', 1)[-1]}: \"...\")"
    more = len(exc.errors()) - 1
    return f"{where}: {msg}" + (f" (and {more} more)" if more else "")


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (if any), apply environment overrides and validate; raise ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid UTF-8 (byte {exc.start})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None)
            raise ConfigError(f"config file {path}{where}: not valid YAML: {problem or 'cannot parse'}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
        data = loaded
    return validate_config(with_env_overrides(data, environ))


def with_env_overrides(data: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`data` with every `CAPTURE_BRIDGE_<SECTION>__<KEY>` variable laid over it (in place)."""
    for key_path, value in _env_overrides(os.environ if environ is None else environ):
        _apply(data, key_path, value)
    return data


def validate_config(data: dict[str, Any]) -> Config:
    """The Config for plain data; ConfigError with one line naming the first wrong key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None
