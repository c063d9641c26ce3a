"""The human log format: one record is one line, whatever the logged values hold."""

from __future__ import annotations

import io
import logging

from bridge.infra.logs import HumanFormatter


def test_control_characters_cannot_forge_log_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(HumanFormatter())
    logger = logging.getLogger("test.hardening.forge")
    logger.addHandler(handler)
    try:
        forged = "r1\n2026-11-29 00:00:00,000 ERROR   bridge: forged\x1b[31m\u2028"
        logger.warning("capture %s", forged, extra={"device": "d\r\n", "request_id": forged})
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\n") == 1  # one record, one line
    assert "\\n2026-11-29" in out
    assert "\\x1b" in out
    assert "\\u2028" in out
