"""Logging setup: human or JSON lines, and a filter that keeps secrets out of every line.

The redactor is a last line of defence: code never formats a token or password
into a message on purpose, but an exception text or a library's debug line might.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from bridge.core.redact import redact

# C0 and C1 controls, DEL and the Unicode line/paragraph separators: in a line-oriented log
# a client's request_id or topic with a newline would forge a line of its own.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_control(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\n`, `\\x1b`, ...)."""
    return _CONTROL.sub(_escape_control, text)




# A device id or request_id longer than this is shortened in log lines (a topic level may be 65 KB).
MAX_EXTRA = 96


def short(value: object, limit: int = MAX_EXTRA) -> str:
    """`value` as text, cut to `limit` characters with its full length said."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with device and request_id when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("device", "request_id", "error"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = short(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`time level logger: message [device=.. request_id=..]`, one line per record (plus a traceback)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Only the message is escaped: a traceback appended after it keeps its own lines.
        record.message = escape_control(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{k}={escape_control(short(getattr(record, k)))}"
            for k in ("device", "request_id")
            if getattr(record, k, None)
        ]
        if not extras:
            return text
        # The bracket belongs to the message line, before any traceback.
        head, sep, tail = text.partition("\n")
        return f"{head} [{' '.join(extras)}]{sep}{tail}"


def setup_logging(level: str = "INFO", fmt: str = "human") -> None:
    """Send logs to stderr in the chosen format, through the secret redactor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(redact)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # paho logs through its own logger only when asked; keep third parties at WARNING.
    for noisy in ("urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
