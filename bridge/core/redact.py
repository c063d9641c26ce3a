"""Secrets are never printed: every registered secret is masked in log lines, states and errors.

A last line of defence: code never formats a token or password into a message on purpose, but
an exception text or a library's debug line might.
"""

from __future__ import annotations

import logging


class Redactor(logging.Filter):
    """Replaces every registered secret in a record's final text with `***`."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        """Never let `secret` reach a log line (short strings are ignored: they would mask noise)."""
        if len(secret) >= 4:
            self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        """`text` with every registered secret masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = self.scrub(record.getMessage())
            record.msg, record.args = message, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


redact = Redactor()
