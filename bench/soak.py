"""Soak test of the real bridge process: `python -m bench.soak [--rate 50] [--seconds 300]` (`make soak`).

A steady stream of commands (default 50/s for 300 s, round-robin over
`--devices` GUIDs) through a private Mosquitto, the mock cloud (its own
process, HTTPS) and `python -m bridge run`. Every 5 s the bridge's RSS, thread count,
open fds and sockets and CPU are sampled from /proc; at the end it prints the
samples, start vs end with growth in %, whether each stayed flat, and the
end-to-end latency, lost and duplicate states. Results go to
bench/results/soak-<time>.json and soak-latest.md. Not part of CI.

"Start" is the first sample taken with traffic flowing (5 s in), so the
import-time and first-connection growth is not counted as a leak. The bridge
remembers the latest 10,000 request_ids (within `bridge.dedupe_window`), so RSS
rises by design until that cap is full (200 s at 50/s); `--settle 240` starts
the comparison after that, so what remains is what a leak would show.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from typing import Any

import yaml

from bench.procs import (
    BridgeProc,
    Cleanup,
    LoadGenProc,
    MockCloudProc,
    ProcSample,
    bridge_config,
    machine_info,
    make_bench_tls,
    new_workdir,
    sample,
    start_broker,
    write_results,
)
from bench.run import BROKER_TUNING, percentile

SAMPLE_EVERY = 5.0
# "Flat": what may change between the first and the last sample.
RSS_GROWTH_LIMIT = 10.0  # %
FD_SLACK = 16  # fds: pooled cloud connections come and go with the load


def growth(first: float, last: float) -> float:
    """Change in percent (0 when the start is 0)."""
    return 0.0 if first == 0 else 100.0 * (last - first) / first


def verdicts(start: ProcSample, end: ProcSample) -> list[dict[str, Any]]:
    """Start vs end per metric, with growth % and whether it stayed flat."""
    rows = [
        ("RSS MB", start.rss_mb, end.rss_mb, growth(start.rss_mb, end.rss_mb) <= RSS_GROWTH_LIMIT),
        ("peak RSS MB", start.hwm_mb, end.hwm_mb, growth(start.hwm_mb, end.hwm_mb) <= RSS_GROWTH_LIMIT),
        ("threads", start.threads, end.threads, end.threads <= start.threads),
        ("open fds", start.fds, end.fds, end.fds <= start.fds + FD_SLACK),
        ("sockets", start.sockets, end.sockets, end.sockets <= start.sockets + FD_SLACK),
    ]
    return [
        {"metric": name, "start": round(a, 1), "end": round(b, 1), "growth_pct": round(growth(a, b), 1), "flat": ok}
        for name, a, b, ok in rows
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=50.0, help="commands per second (default 50)")
    p.add_argument("--seconds", type=float, default=300.0, help="duration (default 300)")
    p.add_argument("--devices", type=int, default=500, help="distinct device GUIDs, round-robin (default 500)")
    p.add_argument("--latency", type=float, default=0.2, help="mock cloud latency in seconds (default 0.2)")
    p.add_argument("--journal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the bridge's config (YAML value)")
    p.add_argument("--stock-broker", action="store_true", help=f"leave out {BROKER_TUNING!r}")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--settle", type=float, default=0.0,
                   help="seconds of traffic before the 'start' sample (e.g. 240: after the dedupe cap fills)")
    args = p.parse_args(argv)

    total = max(1, round(args.rate * args.seconds))
    devices = max(1, min(args.devices, total))
    commands = math.ceil(total / devices)
    info = machine_info()
    started = dt.datetime.now().astimezone()
    print(f"soak: {devices} devices x {commands} = {devices * commands} commands at {args.rate:g}/s "
          f"(~{devices * commands / args.rate:.0f} s), cloud latency {args.latency * 1000:g} ms, "
          f"journal {'on' if args.journal else 'off'}", flush=True)
    samples: list[ProcSample] = []
    load: dict[str, Any] = {}
    code: int | None = None
    log = ""
    interrupted = False
    with Cleanup() as cleanup:
        work = new_workdir(cleanup, args.keep, "capture-soak-")
        try:
            broker = start_broker(cleanup, work, "" if args.stock_broker else BROKER_TUNING)
            # Over HTTPS like the real cloud: a CA made for this run, verified through cloud.ca_file.
            tls = make_bench_tls(work)
            cloud = MockCloudProc(cleanup, work, args.latency, tls=tls)
            config = bridge_config(broker.url, cloud.base_url, work / "bridge", journal=args.journal,
                                   ca_file=tls.ca_file)
            for item in args.set:
                key, _, raw = item.partition("=")
                node = config
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = yaml.safe_load(raw)
            bridge = BridgeProc(cleanup, work / "bridge", config)
            gen = LoadGenProc(cleanup, work, broker.port, bridge.base, devices=devices, commands=commands,
                              rate=args.rate, deadline=120.0 + args.latency * commands)
            gen.next_event(60.0)
            samples.append(sample(bridge.pid))
            gen.go()
            t0 = time.monotonic()
            next_at = t0 + SAMPLE_EVERY
            while True:
                if bridge.proc.poll() is not None:
                    raise RuntimeError(f"bridge exited {bridge.proc.returncode}: {bridge.log_text()[-2000:]}")
                try:
                    load = gen.next_event(max(0.01, next_at - time.monotonic()))
                    break
                except TimeoutError:
                    pass
                s = sample(bridge.pid)
                samples.append(s)
                next_at += SAMPLE_EVERY
                print(f"  {s.at - t0:6.0f}s  RSS {s.rss_mb:6.1f} MB  peak {s.hwm_mb:6.1f} MB  threads {s.threads}"
                      f"  fds {s.fds}  sockets {s.sockets}  CPU {s.cpu_s:6.2f} s", flush=True)
            samples.append(sample(bridge.pid))
            gen.finish()
            code, _ = bridge.stop()
            log = bridge.log_text()
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: cleaning up", file=sys.stderr)
    if len(samples) < 3 or not load:
        print("soak: not enough samples", file=sys.stderr)
        return 130 if interrupted else 1

    # samples[0] is before any traffic; with --settle, start after the bounded caches filled.
    t_first = samples[1].at
    start = next((s for s in samples[1:-1] if s.at - t_first >= args.settle), samples[1])
    end = samples[-1]
    table = verdicts(start, end)
    latencies: list[float] = load.pop("latencies")
    load.pop("requests", None)
    e2e = {f"p{q}": round(1000 * (percentile(latencies, q) or 0.0), 2) for q in (50, 95, 99, 100)}
    cpu_per_s = (end.cpu_s - start.cpu_s) / max(1e-9, end.at - start.at)
    flat = all(row["flat"] for row in table)
    lines = [
        f"# Soak: {args.rate:g} commands/s for {args.seconds:g} s, cloud latency {args.latency * 1000:g} ms\n\n",
        "| metric | start | end | growth % | flat |\n|---|---|---|---|---|\n",
        *(f"| {r['metric']} | {r['start']} | {r['end']} | {r['growth_pct']:+.1f} | {'yes' if r['flat'] else 'NO'} |\n"
          for r in table),
        f"\nbridge CPU {100 * cpu_per_s:.1f} % of a core; e2e p50/p95/p99/max {e2e['p50']}/{e2e['p95']}/"
        f"{e2e['p99']}/{e2e['p100']} ms; published {load['published']}, lost {load['lost']}, "
        f"duplicates {load['duplicates']}, statuses {load['statuses']}; bridge exit code {code}; "
        f"log lines {len(log.splitlines())}.\n",
        f"\nVerdict: {'FLAT' if flat else 'GROWING'} (RSS within {RSS_GROWTH_LIMIT:g} %, threads not up, "
        f"fds within +{FD_SLACK}). Start = first sample with traffic, end = after the last state.\n",
    ]
    md = "".join(lines)
    data = {
        "started": started.isoformat(), "argv": sys.argv[1:], "machine": info, "interrupted": interrupted,
        "config": {"rate": args.rate, "seconds": args.seconds, "devices": devices, "commands": commands,
                   "latency": args.latency, "journal": args.journal, "set": args.set,
                   "stock_broker": args.stock_broker},
        "samples": [s.as_dict() for s in samples], "verdicts": table, "flat": flat, "e2e_ms": e2e,
        "bridge_cpu_share": round(cpu_per_s, 4), "load": load, "bridge_exit_code": code,
    }
    path, md_path = write_results(f"soak-{started:%Y%m%d-%H%M%S}", data, md, latest="soak-latest")
    print("\n" + md)
    print(f"saved {path} and {md_path}")
    broken = load["lost"] or load["duplicates"] or code != 0
    return 130 if interrupted else (1 if broken else 0)


if __name__ == "__main__":
    sys.exit(main())
