"""Secrets from files (`*_file` keys: Docker and Kubernetes secrets), read once when the config loads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bridge.core.errors import ConfigError


def read_secret_file(key: str, path: object) -> str:
    """The secret a `*_file` key points to (a Docker or Kubernetes secret), read once at load.

    One trailing newline is dropped: `echo secret > file` and most secret stores add one.
    A file that cannot be read stops the program with one line naming the key, never the content.
    """
    # ConfigError is not a ValueError, so pydantic lets it through untouched: the line names
    # the full key instead of the section a model validator would be reported under.
    try:
        text = Path(str(path)).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not text:
        raise ConfigError(f"{key}: {path} is empty")
    return text


def secret_from_file(data: object, section: str, field: str) -> object:
    """Fill `field` from `<field>_file` in a section's raw data; both at once is a mistake."""
    if not isinstance(data, Mapping):
        return data
    file_key = f"{field}_file"
    path = data.get(file_key)
    if path is None:
        return data
    if data.get(field) is not None:
        raise ValueError(f"set {section}.{field} or {section}.{file_key}, not both")
    if not isinstance(path, str | Path):
        return data  # the field's own validation reports the wrong type
    return {**data, field: read_secret_file(f"{section}.{file_key}", path)}
