"""The Supervisor's options schema mini-language, as far as the add-on's config.yaml uses it.

Written by hand because no library implements it: the Supervisor's own code is
supervisor/apps/options.py (voluptuous inside the Supervisor). This checks what our `schema:` and
`options:` use: `str`, `password`, `int`/`float` with ranges, `bool`, `url`, `match(REGEX)`,
`list(a|b)`, the `?` suffix, a list of one element type, and a list of dicts. Any other type
(`email`, `port`, `device`) is refused here, so extending the schema means extending this too.
Where the Supervisor only logs (an option the schema does not declare) this is an error: such a
value would be dropped without the user being told.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

# supervisor/apps/options.py RE_SCHEMA_ELEMENT: a type outside it makes the Supervisor refuse the add-on.
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:"
    r"|bool"
    r"|email"
    r"|url"
    r"|port"
    r"|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)"
    r"|list\((?P<list>.+)\)"
    r")\??$"
)


class SchemaError(ValueError):
    """An option that the Supervisor would refuse, or that this checker cannot judge."""


def check_schema(schema: dict[str, Any], where: str = "schema") -> None:
    """Every element type is one the Supervisor knows; a list holds one element, never a list."""
    for key, typ in schema.items():
        name = f"{where}.{key}"
        if isinstance(typ, dict):
            check_schema(typ, name)
        elif isinstance(typ, list):
            if len(typ) != 1 or isinstance(typ[0], list):
                raise SchemaError(f"{name}: a list schema holds exactly one element type (not a list)")
            if isinstance(typ[0], dict):
                check_schema(typ[0], name)
            else:
                _element(typ[0], name)
        else:
            _element(typ, name)


def _element(typ: object, name: str) -> re.Match[str]:
    if not isinstance(typ, str) or (match := RE_SCHEMA_ELEMENT.match(typ)) is None:
        raise SchemaError(f"{name}: {typ!r} is not a type the Supervisor knows")
    if match.group("match") is not None:
        re.compile(match.group("match"))
    return match


def validate_options(schema: dict[str, Any], options: dict[str, Any], where: str = "options") -> None:
    """Raise SchemaError naming the first option the Supervisor would refuse (or silently drop)."""
    for key, value in options.items():
        if key not in schema:
            raise SchemaError(f"{where}.{key}: not in the schema (the Supervisor drops it)")
        _value(schema[key], value, f"{where}.{key}")
    for key, typ in schema.items():
        if key not in options and not (isinstance(typ, str) and typ.endswith("?")):
            raise SchemaError(f"{where}.{key}: missing, and the schema does not make it optional")


def _value(typ: Any, value: Any, name: str) -> None:
    if isinstance(typ, dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{name}: must be a mapping")
        validate_options(typ, value, name)
    elif isinstance(typ, list):
        if not isinstance(value, list):
            raise SchemaError(f"{name}: must be a list")
        for number, item in enumerate(value):
            _value(typ[0], item, f"{name}[{number}]")
    else:
        _single(typ, value, name)


def _single(typ: str, value: Any, name: str) -> None:
    if value is None:
        raise SchemaError(f"{name}: missing required option")
    match = _element(typ, name)
    kind = typ.rstrip("?").split("(", 1)[0]
    if kind in ("str", "password"):
        if not isinstance(value, str):
            raise SchemaError(f"{name}: must be text")
        _in_range(len(value), match.group("s_min") or match.group("p_min"),
                  match.group("s_max") or match.group("p_max"), f"{name} length")
    elif kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind == "int" and value != int(value)):
            raise SchemaError(f"{name}: must be a number ({kind})")
        _in_range(value, match.group("i_min") or match.group("f_min"),
                  match.group("i_max") or match.group("f_max"), name)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise SchemaError(f"{name}: must be true or false")
    elif kind == "url":
        parts = urlsplit(str(value))
        if not parts.scheme or not parts.netloc:
            raise SchemaError(f"{name}: {value!r} is not a URL")
    elif kind == "match":
        if re.match(match.group("match"), str(value)) is None:
            raise SchemaError(f"{name}: {value!r} does not match {match.group('match')}")
    elif kind == "list":
        if str(value) not in match.group("list").split("|"):
            raise SchemaError(f"{name}: {value!r} is not one of {match.group('list')}")
    else:
        raise SchemaError(f"{name}: type {typ!r} is not supported by this checker; extend it")


def _in_range(number: float, low: str | None, high: str | None, name: str) -> None:
    if low is not None and number < float(low):
        raise SchemaError(f"{name}: below {low}")
    if high is not None and number > float(high):
        raise SchemaError(f"{name}: above {high}")
