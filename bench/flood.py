"""Flood the real bridge: `python -m bench.flood [--commands 100000] [--onlines 100] [--devices 301]` (`make flood`).

A private Mosquitto, the mock cloud and `python -m bridge run` (see tests/support/flood.py).
Passes when every command got its final state (live or after one restart), Home Assistant's
`online` storm was coalesced, and the bridge's RSS after the flood is under `--rss-limit` MB.
First it reports what one Home Assistant birth costs (discovery messages and bytes) in each
discovery mode, device-based (the default) and per-entity, for `--devices` cameras.
Not part of CI; the test suite runs a short version (tests/integration/test_flood.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.support.broker import Broker
from tests.support.flood import measure_birth, run_flood


def main() -> int:
    """Run one flood and print its result as JSON; exit 1 when a check fails."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--commands", type=int, default=100_000)
    p.add_argument("--onlines", type=int, default=100)
    p.add_argument("--devices", type=int, default=301, help="configured cameras (discovery size)")
    p.add_argument("--guids", type=int, default=2000, help="GUID topic ids the commands are spread over")
    p.add_argument("--answer-timeout", type=float, default=900.0)
    p.add_argument("--rss-limit", type=float, default=120.0)
    p.add_argument("--max-in-flight", type=int, default=None, help="bridge.max_in_flight (default: the bridge's)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="capture-flood-") as tmp:
        broker = Broker(Path(tmp) / "broker", extra="max_queued_messages 1000000").start()
        try:
            births = {mode: measure_birth(broker.port, Path(tmp) / f"birth-{mode}", devices=args.devices,
                                          discovery=mode) for mode in ("entity", "device")}
            print(json.dumps({"per_ha_birth": {m: {"messages": b.messages, "bytes": b.bytes}
                                               for m, b in births.items()}, "devices": args.devices}), flush=True)
            result = run_flood(broker.port, Path(tmp) / "run", commands=args.commands, onlines=args.onlines,
                               devices=args.devices, guids=args.guids, answer_timeout=args.answer_timeout,
                               bridge={"max_in_flight": args.max_in_flight} if args.max_in_flight else None)
        finally:
            broker.stop()
    print(json.dumps(result.summary(), indent=2))
    failures = []
    if result.missing:
        failures.append(f"{len(result.missing)} command(s) without a final state")
    if result.announcements > max(3, args.onlines // 4):
        failures.append(f"{result.announcements} discovery announcements for {args.onlines} onlines")
    if result.rss_after_mb >= args.rss_limit:
        failures.append(f"RSS {result.rss_after_mb:.0f} MB after the flood (limit {args.rss_limit:.0f})")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if failures:
        print(result.log_tail, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
