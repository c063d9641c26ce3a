"""Summarize py-spy output: `python -m bench.flame FILE... [--top N]`.

Prints the functions with the most samples, by self time (the frame on top of
the stack) and by inclusive time (anywhere on the stack, counted once per
sample), as percentages of all samples. `bench.run --profile DIR` writes the
input files: py-spy's raw collapsed stacks (`*.txt`), or with
`--profile-format chrometrace` timestamped samples (`*.json`), which this tool
can cut into a window (`--from/--to`, seconds since py-spy started) and show as
a timeline of busy milliseconds per bucket (`--timeline MS`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def _function(frame: str, with_line: bool) -> str:
    if with_line:
        return frame
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3.12/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def load(path: Path, with_line: bool = False) -> tuple[int, Counter[str], Counter[str]]:
    """(total samples, self samples per function, inclusive samples per function)."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        count = int(m.group("count"))
        frames = [_function(f, with_line) for f in m.group("stack").split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


MAX_GAP = 0.003  # py-spy emits no event when a thread goes idle: cap an interval at a few sample periods


def _trace_intervals(path: Path) -> list[tuple[float, float, tuple[str, ...]]]:
    """chrometrace B/E events -> (start s, end s, stack) intervals while a stack is on the CPU."""
    events = json.loads(path.read_text())
    stacks: dict[int, list[str]] = {}
    last: dict[int, float] = {}
    out: list[tuple[float, float, tuple[str, ...]]] = []
    for ev in sorted(events, key=lambda e: e["ts"]):
        tid, ts = ev["tid"], ev["ts"] / 1e6
        stack = stacks.setdefault(tid, [])
        if stack and tid in last and ts > last[tid]:
            out.append((last[tid], min(ts, last[tid] + MAX_GAP), tuple(stack)))
        last[tid] = ts
        name = f"{ev['name']} ({ev.get('args', {}).get('filename', '?')})"
        if ev["ph"] == "B":
            stack.append(_function(name, False))
        elif ev["ph"] == "E" and stack:
            stack.pop()
    return out


def load_trace(
    path: Path, start: float | None, end: float | None
) -> tuple[int, Counter[str], Counter[str]]:
    """Like `load`, from a chrometrace file, in milliseconds, cut to [start, end]."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0.0
    for a, b, stack in _trace_intervals(path):
        a, b = max(a, start if start is not None else a), min(b, end if end is not None else b)
        if b <= a or not stack:
            continue
        ms = (b - a) * 1000.0
        total += ms
        own[stack[-1]] += ms  # type: ignore[assignment]
        for name in set(stack):
            inclusive[name] += ms  # type: ignore[assignment]
    return round(total), own, inclusive


def timeline(path: Path, bucket_ms: float, top: int = 2) -> str:
    """Busy milliseconds per bucket and what was on top (by inclusive bridge frames)."""
    buckets: dict[int, Counter[str]] = {}
    busy: Counter[int] = Counter()
    for a, b, stack in _trace_intervals(path):
        if not stack or stack[-1].startswith("EpollSelector.select"):
            continue
        k = int(a * 1000.0 // bucket_ms)
        busy[k] += round((b - a) * 1e6)
        names = [f for f in stack if "bridge/" in f]
        key = names[-1] if names else stack[-1]
        buckets.setdefault(k, Counter())[key] += round((b - a) * 1e6)
    lines = [f"{path}: busy ms per {bucket_ms:g} ms bucket (main + other threads)\n"]
    for k in sorted(busy):
        tops = ", ".join(f"{n} {v / 1000:.0f}" for n, v in buckets[k].most_common(top))
        lines.append(f"  {k * bucket_ms / 1000:7.3f}s  {busy[k] / 1000:6.1f}  {tops}\n")
    return "".join(lines)


def report(
    path: Path, top: int, with_line: bool = False, start: float | None = None, end: float | None = None
) -> str:
    """The two top-N tables as text."""
    if path.suffix == ".json":
        total, own, inclusive = load_trace(path, start, end)
    else:
        total, own, inclusive = load(path, with_line)
    if not total:
        return f"{path}: no samples\n"
    unit = "ms on CPU" if path.suffix == ".json" else "samples"
    out = [f"{path}: {total} {unit}\n", "\nself time:\n"]
    out += [f"  {100 * n / total:5.1f}%  {name}\n" for name, n in own.most_common(top)]
    out.append("\ninclusive time:\n")
    out += [f"  {100 * n / total:5.1f}%  {name}\n" for name, n in inclusive.most_common(top)]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--lines", action="store_true", help="keep line numbers (one row per line, not function)")
    p.add_argument("--from", dest="start", type=float, help="chrometrace: window start, s since py-spy started")
    p.add_argument("--to", dest="end", type=float, help="chrometrace: window end")
    p.add_argument("--timeline", type=float, metavar="MS", help="chrometrace: busy time per bucket of MS ms")
    args = p.parse_args(argv)
    for f in args.files:
        if args.timeline:
            sys.stdout.write(timeline(f, args.timeline))
        else:
            sys.stdout.write(report(f, args.top, args.lines, args.start, args.end))
    return 0


if __name__ == "__main__":
    sys.exit(main())
