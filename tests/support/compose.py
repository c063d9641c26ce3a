"""Reading the shipped compose files as compose does: YAML, `${VAR:-default}` values, durations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def compose_default(value: str) -> str:
    """`${VAR:-default}` -> default (compose interpolation); any other value unchanged."""
    match = re.fullmatch(r"\$\{\w+:-(.+)\}", value)
    return match.group(1) if match else value


def grace_seconds(value: str) -> float:
    """A compose duration like `45s` or `1m30s` in seconds."""
    total, units = 0.0, {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    for number, unit in re.findall(r"([\d.]+)(ms|h|m|s)", value):
        total += float(number) * units[unit]
    return total
