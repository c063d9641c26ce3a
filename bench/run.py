"""Throughput benchmark of the real bridge process: `python -m bench.run --suite quick|full`.

Per scenario: a private Mosquitto and the mock cloud (its own process, fixed
latency, HTTPS with a certificate from a CA made for this run unless the scenario
says plain HTTP) are started once; every run gets a fresh bridge process
(`python -m bridge run`) and a fresh load generator process (`bench.loadgen`).
The clock starts at the first publish (after the bridge said online) and stops
at the last final state. Reported per scenario: medians over the runs of total
time, throughput, end-to-end latency percentiles and the bridge's own overhead
(end-to-end minus the cloud's latency); the maximum peak RSS (VmHWM) and the
sum of lost and duplicate states over the runs; the bridge's CPU seconds.

One custom scenario instead of a suite:
    python -m bench.run --devices 5000 --commands 2 --latency 0.5 --runs 1 --max-in-flight 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import (
    LOCALHOST,
    PYTHON,
    BenchTls,
    BridgeProc,
    Cleanup,
    LoadGenProc,
    MockCloudProc,
    bridge_config,
    cpu_seconds,
    machine_info,
    make_bench_tls,
    new_workdir,
    nodelay_injection,
    nofile_limit,
    sample,
    scrape_metrics,
    start_broker,
    terminate,
    write_results,
)
from tests.support.broker import free_port

DEFAULT_IN_FLIGHT = 1024  # the bridge's bridge.max_in_flight default
# Mosquitto's default leaves Nagle on for client sockets: a state can wait ~10-40 ms for the ACK of an
# earlier small packet (delayed ACK), which would bury the bridge's own overhead. `--stock-broker` keeps it.
BROKER_TUNING = "set_tcp_nodelay true"
IDLE_SECONDS = 10.0
IDLE_CPU_TARGET = 0.05  # CPU seconds in IDLE_SECONDS: "about zero" (0.5 %)


@dataclass(frozen=True)
class Target:
    """What a scenario has to meet (None = not judged)."""

    total_s: float | None = None
    nodered_s: float | None = None
    overhead_p50_ms: float | None = None
    overhead_p99_ms: float | None = None
    rss_mb: float | None = None
    idle_cpu_s: float | None = None
    dns_lookups: int | None = None
    zero_loss: bool = True


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario."""

    name: str
    devices: int
    commands: int = 1
    latency: float = 0.0
    runs: int = 3
    rate: float | None = None  # commands per second; None = burst
    journal: bool = True
    max_in_flight: int | None = None
    idle: bool = False  # no traffic: measure CPU over IDLE_SECONDS
    tls: bool = True  # the cloud over HTTPS, as the real one; False = plain HTTP
    host: str = LOCALHOST  # the cloud's host in the bridge's base_url ("localhost" makes it resolve names)
    target: Target = field(default_factory=Target)

    @property
    def total(self) -> int:
        """Commands in one run."""
        return self.devices * self.commands

    def deadline(self) -> float:
        """Seconds after the last publish before a missing state counts as lost."""
        waves = max(self.commands, math.ceil(self.total / (self.max_in_flight or DEFAULT_IN_FLIGHT)))
        return 60.0 + self.latency * waves

    def describe(self) -> str:
        """Human summary."""
        if self.idle:
            return f"{self.name}: bridge idle for {IDLE_SECONDS:.0f}s"
        load = f"{self.rate:g}/s" if self.rate else "burst"
        extra = ", HTTPS" if self.tls else ", plain HTTP"
        extra += f" to {self.host}" if self.host != LOCALHOST else ""
        extra += "" if self.journal else ", journal off"
        extra += f", max_in_flight {self.max_in_flight}" if self.max_in_flight else ""
        return (f"{self.name}: {self.devices} devices x {self.commands}, {load}, "
                f"cloud latency {self.latency * 1000:g} ms{extra}, {self.runs} run(s)")


# Node-RED 4.1 with the same hand-wired flow, over HTTPS to the same kind of mock cloud on this
# kind of machine (medians of 3 in one run; 10,000 devices a single run). Plain HTTP where noted.
NODERED_HTTPS = {"0ms": 2.39, "200ms": 2.43, "2s": 4.33, "10000@2s": 30.5}
NODERED_HTTP_2S = 2.84
RSS_TARGET = 110.0  # MB, with 1000 TLS connections in flight
RSS_TARGET_10K = 160.0
DNS_TARGET = 5  # "a handful" of lookups for a cold burst against a host name


def _ratio(nodered: float, ratio: float) -> float:
    return round(nodered * ratio, 3)


QUICK: list[Scenario] = [
    Scenario("burst-1000@0ms", 1000, latency=0.0,
             target=Target(total_s=_ratio(NODERED_HTTPS["0ms"], 0.7), nodered_s=NODERED_HTTPS["0ms"],
                           rss_mb=RSS_TARGET)),
    Scenario("burst-1000@200ms", 1000, latency=0.2,
             target=Target(total_s=_ratio(NODERED_HTTPS["200ms"], 0.7), nodered_s=NODERED_HTTPS["200ms"],
                           rss_mb=RSS_TARGET)),
    Scenario("burst-1000@2s", 1000, latency=2.0,
             target=Target(total_s=_ratio(NODERED_HTTPS["2s"], 0.8), nodered_s=NODERED_HTTPS["2s"],
                           rss_mb=RSS_TARGET)),
]
FULL: list[Scenario] = [
    *QUICK,
    Scenario("burst-10000@2s", 10000, latency=2.0,
             target=Target(total_s=_ratio(NODERED_HTTPS["10000@2s"], 0.8), nodered_s=NODERED_HTTPS["10000@2s"],
                           rss_mb=RSS_TARGET_10K)),
    Scenario("steady-100/s@0ms", 100, commands=20, latency=0.0, rate=100.0, runs=3,
             target=Target(overhead_p50_ms=5.0, overhead_p99_ms=25.0)),
    Scenario("cold-1000@0ms-hostname", 1000, latency=0.0, host="localhost",
             target=Target(dns_lookups=DNS_TARGET)),
    Scenario("idle-10s", 0, runs=1, idle=True, target=Target(idle_cpu_s=IDLE_CPU_TARGET)),
    Scenario("burst-1000@2s-nojournal", 1000, latency=2.0, journal=False,
             target=Target(total_s=_ratio(NODERED_HTTPS["2s"], 0.8), nodered_s=NODERED_HTTPS["2s"],
                           rss_mb=RSS_TARGET)),
    Scenario("burst-1000@2s-plain-http", 1000, latency=2.0, tls=False,
             target=Target(total_s=_ratio(NODERED_HTTP_2S, 0.8), nodered_s=NODERED_HTTP_2S, rss_mb=RSS_TARGET)),
]
SUITES = {"quick": QUICK, "full": FULL}


# --- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000.0, 3)


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    """Median over runs of a nested numeric field (missing values skipped)."""
    values: list[float] = []
    for run in runs:
        node: Any = run
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            values.append(float(node))
    return statistics.median(values) if values else None


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Env:
    """What a scenario's runs share."""

    cleanup: Cleanup
    workdir: Path
    broker_port: int
    broker_pid: int
    cloud: MockCloudProc
    profile_dir: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    profile_format: str = "raw"
    warmup: int = 0
    inject: Path | None = None
    tls: BenchTls | None = None


def _start_profiler(env: Env, pid: int, name: str) -> tuple[subprocess.Popen[bytes], Path] | None:
    if env.profile_dir is None:
        return None
    env.profile_dir.mkdir(parents=True, exist_ok=True)
    suffix = "json" if env.profile_format == "chrometrace" else "txt"
    out = env.profile_dir / f"{name}.{suffix}"
    spy = Path(PYTHON).with_name("py-spy")
    proc = subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--rate", "1000", "--format", env.profile_format, "--nonblocking",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    env.cleanup.push(lambda: terminate(proc, 5))
    time.sleep(0.5)  # let it attach before the clock starts
    return proc, out


def _stop_profiler(handle: tuple[subprocess.Popen[bytes], Path] | None) -> str | None:
    if handle is None:
        return None
    proc, out = handle
    proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        terminate(proc, 5)
    return str(out)


def _wait_result(gen: LoadGenProc, bridge: BridgeProc, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        if bridge.proc.poll() is not None:
            raise RuntimeError(f"bridge exited with {bridge.proc.returncode}:\n{bridge.log_text()[-3000:]}")
        try:
            return gen.next_event(min(1.0, max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise


def split_latency(
    requests: list[list[Any]], arrivals: list[tuple[float, str]], latency: float
) -> dict[str, Any]:
    """Per command: publish -> request at the cloud ("inbound") and cloud answer -> state ("outbound")."""
    by_device: dict[str, list[float]] = {}
    for at, guid in arrivals:
        by_device.setdefault(guid, []).append(at)
    seen: dict[str, int] = {}
    inbound: list[float] = []
    outbound: list[float] = []
    for device, sent, got in requests:
        k = seen.get(device, 0)
        seen[device] = k + 1
        times = by_device.get(device, [])
        if k >= len(times):
            continue
        inbound.append(times[k] - sent)
        if got is not None:
            outbound.append(got - times[k] - latency)
    return {
        "inbound_ms": {f"p{p}": _ms(percentile(inbound, p)) for p in (50, 95, 99, 100)},
        "outbound_ms": {f"p{p}": _ms(percentile(outbound, p)) for p in (50, 95, 99, 100)},
    }


def _log_summary(text: str) -> dict[str, Any]:
    lines = text.splitlines()
    return {
        "lines": len(lines),
        "warnings": sum(1 for line in lines if "WARNING" in line),
        "errors": sum(1 for line in lines if "ERROR" in line or "Traceback" in line),
        "tail": lines[-5:],
    }


def run_once(env: Env, sc: Scenario, index: int) -> dict[str, Any]:
    """One fresh bridge, one load generator, one set of numbers."""
    rundir = env.workdir / f"{sc.name.replace('/', '_')}-{index}"
    metrics_port = free_port()
    config = bridge_config(f"mqtt://127.0.0.1:{env.broker_port}", env.cloud.base_url, rundir,
                           journal=sc.journal, max_in_flight=sc.max_in_flight,
                           ca_file=env.tls.ca_file if env.tls is not None else None, metrics_port=metrics_port)
    for dotted, value in env.overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    bridge = BridgeProc(env.cleanup, rundir, config, inject=env.inject)
    started = time.monotonic()
    gen = LoadGenProc(
        env.cleanup, rundir, env.broker_port, bridge.base, devices=0 if sc.idle else sc.devices,
        commands=sc.commands, rate=sc.rate, deadline=sc.deadline(), warmup=env.warmup,
        detail=env.cloud.tap is not None,
    )
    result: dict[str, Any] = {"run": index}
    profiler = None
    try:
        gen.next_event(60.0)  # ready: subscribed, bridge online
        result["bridge_ready_s"] = round(time.monotonic() - started, 3)
        if sc.idle:
            time.sleep(1.0)  # settle after connecting
        profiler = _start_profiler(env, bridge.pid, f"{sc.name.replace('/', '_')}-{index}")
        before = sample(bridge.pid)
        soft, hard = nofile_limit(bridge.pid)
        result["bridge_nofile"] = [soft, hard]
        needed = (sc.max_in_flight or DEFAULT_IN_FLIGHT) + 64
        if soft is not None and soft < needed:
            print(f"  warning: the bridge's open-files limit is {soft} (hard {hard}), "
                  f"below the {needed} that max_in_flight needs", flush=True)
        others_before = {"broker": cpu_seconds(env.broker_pid), "cloud": cpu_seconds(env.cloud.pid)}
        wall = time.monotonic()
        if sc.idle:
            time.sleep(IDLE_SECONDS)
        gen.go()
        load = _wait_result(gen, bridge, sc.deadline() + 120.0)
        wall = time.monotonic() - wall
        after = sample(bridge.pid)
        others = {k: round(cpu_seconds(pid) - others_before[k], 3)
                  for k, pid in (("broker", env.broker_pid), ("cloud", env.cloud.pid))}
        try:
            metrics = scrape_metrics(metrics_port)
        except OSError as exc:
            print(f"  warning: could not read the bridge's metrics: {exc}", flush=True)
            metrics = {}
        result["dns_lookups"] = metrics.get("capture_bridge_cloud_dns_lookups")
        result["connections_opened"] = metrics.get("capture_bridge_cloud_connections_opened")
        result["profile"] = _stop_profiler(profiler)
        profiler = None
        gen.finish()
    finally:
        _stop_profiler(profiler)
        code, stop_s = bridge.stop()
    t0 = load.pop("t0")
    requests = load.pop("requests")
    arrivals = env.cloud.arrivals(t0 - 0.01, t0 + load["total_seconds"] + 1.0)
    if arrivals:
        n = len(arrivals) - 1
        result["cloud_timeline_s"] = [round(arrivals[round(n * q / 10)][0] - t0, 4) for q in range(11)]
        result["cloud_requests"] = len(arrivals)
        result.update(split_latency(requests, arrivals, sc.latency))
    latencies: list[float] = load.pop("latencies")
    overheads = [x - sc.latency for x in latencies]
    total = load["total_seconds"]
    result.update({
        "total_s": round(total, 4) if not sc.idle else None,
        "throughput_per_s": round(load["published"] / total, 1) if total > 0 else None,
        "e2e_ms": {f"p{p}": _ms(percentile(latencies, p)) for p in (50, 95, 99, 100)},
        "overhead_ms": {f"p{p}": _ms(percentile(overheads, p)) for p in (50, 95, 99)},
        "e2e_mean_ms": _ms(statistics.fmean(latencies)) if latencies else None,
        "lost": load["lost"],
        "duplicates": load["duplicates"],
        "statuses": load["statuses"],
        "errors": load["errors"],
        "pending_seen": load["pending_seen"],
        "unknown_states": load["unknown"],
        "wrong_device": load["wrong_device"],
        "publish_s": round(load["publish_seconds"], 4),
        "final_timeline_s": load["final_timeline"],
        "pending_timeline_s": load["pending_timeline"],
        "window_s": round(wall, 3),
        "bridge": {
            "cpu_s": round(after.cpu_s - before.cpu_s, 3),
            "peak_rss_mb": round(after.hwm_mb, 1),
            "rss_mb_start": round(before.rss_mb, 1),
            "rss_mb_end": round(after.rss_mb, 1),
            "threads": after.threads,
            "fds_end": after.fds,
            "sockets_end": after.sockets,
            "wakeups": after.voluntary_switches - before.voluntary_switches,
            "exit_code": code,
            "stop_s": round(stop_s, 3),
            "log": _log_summary(bridge.log_text()),
        },
        "cpu_s": {**others, "loadgen": round(load["cpu_seconds"], 3)},
    })
    return result


# --- a scenario ------------------------------------------------------------------------------


def judge(sc: Scenario, summary: dict[str, Any]) -> list[tuple[str, bool]]:
    """Each target of the scenario and whether the medians meet it."""
    t = sc.target
    checks: list[tuple[str, bool]] = []
    total = summary["total_s"]
    if t.total_s is not None:
        checks.append((f"total <= {t.total_s} s", total is not None and total <= t.total_s))
    if t.overhead_p50_ms is not None:
        v = summary["overhead_ms"]["p50"]
        checks.append((f"overhead p50 <= {t.overhead_p50_ms:g} ms", v is not None and v <= t.overhead_p50_ms))
    if t.overhead_p99_ms is not None:
        v = summary["overhead_ms"]["p99"]
        checks.append((f"overhead p99 <= {t.overhead_p99_ms:g} ms", v is not None and v <= t.overhead_p99_ms))
    if t.rss_mb is not None:
        checks.append((f"peak RSS <= {t.rss_mb:g} MB", summary["peak_rss_mb"] <= t.rss_mb))
    if t.idle_cpu_s is not None:
        checks.append((f"idle CPU <= {t.idle_cpu_s:g} s", summary["bridge_cpu_s"] <= t.idle_cpu_s))
    if t.dns_lookups is not None:
        lookups = summary["dns_lookups"]
        checks.append((f"DNS lookups <= {t.dns_lookups}", lookups is not None and lookups <= t.dns_lookups))
    if t.zero_loss and not sc.idle:
        checks.append(("zero lost", summary["lost"] == 0))
        checks.append(("zero duplicates", summary["duplicates"] == 0))
        checks.append(("every state ok", summary["not_ok"] == 0))
        checks.append(("all runs completed", summary["completed_runs"] == summary["runs"]))
    return checks


def summarize(sc: Scenario, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (times, CPU), maximum (peak RSS) and sums (lost, dup) over the runs."""
    ok = [r for r in runs if "error" not in r]
    summary: dict[str, Any] = {
        "runs": len(runs),
        "completed_runs": sum(1 for r in ok if r["lost"] == 0),
        "total_s": median_of(ok, "total_s"),
        "throughput_per_s": median_of(ok, "throughput_per_s"),
        "e2e_ms": {p: median_of(ok, "e2e_ms", p) for p in ("p50", "p95", "p99", "p100")},
        "overhead_ms": {p: median_of(ok, "overhead_ms", p) for p in ("p50", "p95", "p99")},
        "peak_rss_mb": max((r["bridge"]["peak_rss_mb"] for r in ok), default=float("nan")),
        "bridge_cpu_s": median_of(ok, "bridge", "cpu_s"),
        "dns_lookups": max((r["dns_lookups"] for r in ok if r.get("dns_lookups") is not None), default=None),
        "connections_opened": median_of(ok, "connections_opened"),
        "lost": sum(r["lost"] for r in ok) + sum(sc.total for r in runs if "error" in r),
        # Final states that arrived but are not "ok" (overloaded, cloud_unreachable, ...): every device answers ok.
        "not_ok": sum(sum(n for status, n in r["statuses"].items() if status != "ok") for r in ok),
        "duplicates": sum(r["duplicates"] for r in ok),
        "failed_runs": len(runs) - len(ok),
    }
    if sc.target.nodered_s and summary["total_s"] is not None:
        summary["vs_nodered"] = round(summary["total_s"] / sc.target.nodered_s, 3)
    checks = judge(sc, summary)
    summary["checks"] = [{"target": name, "pass": passed} for name, passed in checks]
    summary["verdict"] = "PASS" if checks and all(p for _, p in checks) else ("MISS" if checks else "-")
    return summary


def run_scenario(
    cleanup: Cleanup,
    root: Path,
    sc: Scenario,
    profile_dir: Path | None,
    overrides: dict[str, Any],
    tap: bool,
    profile_format: str = "raw",
    warmup: int = 0,
    broker_conf: str = "",
    bridge_nodelay: bool = False,
    inject: Path | None = None,
) -> dict[str, Any]:
    """Broker + cloud for the scenario, then R runs."""
    print(f"\n== {sc.describe()}", flush=True)
    workdir = root / sc.name.replace("/", "_")
    workdir.mkdir(parents=True)
    scoped = Cleanup()
    try:
        broker = start_broker(scoped, workdir, broker_conf)
        assert broker.proc is not None
        tls = make_bench_tls(workdir) if sc.tls else None
        cloud = MockCloudProc(scoped, workdir, sc.latency, workdir / "cloud-arrivals.txt" if tap else None,
                              tls=tls, host=sc.host)
        env = Env(cleanup, workdir, broker.port, broker.proc.pid, cloud, profile_dir, overrides, profile_format,
                  warmup, inject or (nodelay_injection(workdir) if bridge_nodelay else None), tls)
        runs: list[dict[str, Any]] = []
        for i in range(1, sc.runs + 1):
            try:
                run = run_once(env, sc, i)
            except (RuntimeError, TimeoutError) as exc:
                print(f"  run {i}: FAILED: {exc}", flush=True)
                runs.append({"run": i, "error": str(exc)})
                continue
            runs.append(run)
            print("  " + _run_line(sc, run), flush=True)
        cloud_log = cloud.log_path.read_text(errors="replace")[-2000:]
    finally:
        scoped.run()
    summary = summarize(sc, runs)
    for check in summary["checks"]:
        print(f"  {'PASS' if check['pass'] else 'MISS'}  {check['target']}")
    return {"scenario": asdict(sc), "summary": summary, "runs": runs, "mock_cloud_log_tail": cloud_log}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _run_line(sc: Scenario, run: dict[str, Any]) -> str:
    b = run["bridge"]
    if sc.idle:
        return (f"run {run['run']}: bridge CPU {b['cpu_s']:.3f} s in {IDLE_SECONDS:.0f} s, "
                f"{b['wakeups']} wakeups, RSS {b['rss_mb_end']:.1f} MB, threads {b['threads']}")
    e, o = run["e2e_ms"], run["overhead_ms"]
    return (f"run {run['run']}: total {run['total_s']:.3f} s ({_fmt(run['throughput_per_s'], 0)}/s), "
            f"e2e p50/p95/p99 {_fmt(e['p50'])}/{_fmt(e['p95'])}/{_fmt(e['p99'])} ms, "
            f"overhead p50/p99 {_fmt(o['p50'])}/{_fmt(o['p99'])} ms, peak RSS {b['peak_rss_mb']:.1f} MB, "
            f"CPU bridge {b['cpu_s']:.2f} s / broker {run['cpu_s']['broker']:.2f} / cloud {run['cpu_s']['cloud']:.2f}"
            f" / loadgen {run['cpu_s']['loadgen']:.2f}, connections {_fmt(run.get('connections_opened'), 0)}, "
            f"DNS lookups {_fmt(run.get('dns_lookups'), 0)}, lost {run['lost']}, dup {run['duplicates']}, "
            f"statuses {run['statuses']}, publish {run['publish_s']:.3f} s")


# --- report ----------------------------------------------------------------------------------


def markdown(results: list[dict[str, Any]], info: dict[str, Any], suite: str, broker_conf: str = "") -> str:
    """The summary table."""
    head = (
        "| scenario | runs | median total s | target | Node-RED s | vs Node-RED | cmd/s | e2e p50/p95/p99 ms "
        "| overhead p50/p99 ms | peak RSS MB | bridge CPU s | conns / DNS | lost | dup | result |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for item in results:
        sc, s = item["scenario"], item["summary"]
        t = sc["target"]
        if sc["idle"]:
            target = f"CPU <= {t['idle_cpu_s']} s / {IDLE_SECONDS:.0f} s"
        elif t["total_s"] is not None:
            target = f"<= {t['total_s']} s"
        elif t["overhead_p50_ms"] is not None:
            target = f"overhead p50 <= {t['overhead_p50_ms']:g}, p99 <= {t['overhead_p99_ms']:g} ms"
        elif t["dns_lookups"] is not None:
            target = f"DNS lookups <= {t['dns_lookups']}, 0 lost"
        else:
            target = "completes, 0 lost"
        ratio = f"{s['vs_nodered']:.2f}x" if s.get("vs_nodered") is not None else "-"
        e, o = s["e2e_ms"], s["overhead_ms"]
        e2e = "-" if sc["idle"] else f"{_fmt(e['p50'])} / {_fmt(e['p95'])} / {_fmt(e['p99'])}"
        over = "-" if sc["idle"] else f"{_fmt(o['p50'])} / {_fmt(o['p99'])}"
        nodered = _fmt(t["nodered_s"], 2)
        conns = f"{_fmt(s.get('connections_opened'), 0)} / {_fmt(s.get('dns_lookups'), 0)}"
        rows.append(
            f"| {sc['name']} | {s['runs']} | {_fmt(s['total_s'], 3)} | {target} | {nodered} | {ratio} "
            f"| {_fmt(s['throughput_per_s'], 0)} | {e2e} | {over} | {_fmt(s['peak_rss_mb'])} "
            f"| {_fmt(s['bridge_cpu_s'], 3)} | {conns} | {s['lost']} | {s['duplicates']} | {s['verdict']} |"
        )
    missed = [
        f"- {item['scenario']['name']}: {c['target']}"
        for item in results for c in item["summary"]["checks"] if not c["pass"]
    ]
    machine = (f"{info['nproc']} CPU ({info['cpu_model']}), Python {info['python']}, {info['mosquitto']}, "
               f"paho-mqtt {info['paho_mqtt']}")
    notes = (
        f"\nSuite `{suite}`, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {machine}.\n"
        "Times, latencies, throughput and CPU are medians over the runs; peak RSS is the maximum VmHWM; "
        "lost and dup are summed over the runs. Overhead = end-to-end minus the mock cloud's latency. "
        "Every scenario runs over HTTPS (private CA made for the run, verified through cloud.ca_file) "
        "unless its name says plain-http. Node-RED 4.1 reference, same flow over HTTPS: "
        f"{NODERED_HTTPS['0ms']} / {NODERED_HTTPS['200ms']} / {NODERED_HTTPS['2s']} s at 0 / 200 / 2000 ms, "
        f"{NODERED_HTTPS['10000@2s']} s for 10,000 at 2 s; plain HTTP 1000 at 2 s: {NODERED_HTTP_2S} s. "
        f"Mosquitto extra config: {broker_conf.replace(chr(10), '; ') or 'none (stock)'}.\n"
    )
    return "".join([head, *(r + "\n" for r in rows), notes, *(["\nMissed targets:\n", *(m + "\n" for m in missed)]
                                                               if missed else [])])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="quick")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this scenario of the suite (repeatable; substring match)")
    p.add_argument("--devices", type=int, help="custom scenario: devices")
    p.add_argument("--commands", type=int, help="custom scenario: commands per device (default 1)")
    p.add_argument("--latency", type=float, help="custom scenario: cloud latency in seconds (default 0)")
    p.add_argument("--runs", type=int, help="runs per scenario (default: 3, or the suite's)")
    p.add_argument("--rate", type=float, help="custom scenario: commands per second (default: burst)")
    p.add_argument("--journal", action=argparse.BooleanOptionalAction, default=None,
                   help="custom scenario: bridge.journal (default on)")
    p.add_argument("--max-in-flight", type=int, help="custom scenario: bridge.max_in_flight")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record the bridge with py-spy (raw collapsed stacks) into DIR, one file per run")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the bridge's config (YAML value), e.g. bridge.publish_pending=true")
    p.add_argument("--tap", action="store_true",
                   help="serve the cloud from bench.cloudtap (same MockCloud) and report when requests reached it")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="diagnostic: N commands to other devices before the clock starts (warm connection pool)")
    p.add_argument("--stock-broker", action="store_true",
                   help=f"leave out the broker tuning ({BROKER_TUNING!r}): Mosquitto's defaults")
    p.add_argument("--broker-conf", action="append", default=[], metavar="LINE",
                   help="diagnostic: extra mosquitto.conf line, e.g. 'max_inflight_messages 0' (repeatable)")
    p.add_argument("--bridge-nodelay", action="store_true",
                   help="diagnostic: patch paho in the bridge process (sitecustomize) to set TCP_NODELAY")
    p.add_argument("--inject", type=Path, metavar="DIR",
                   help="diagnostic: put DIR (holding a sitecustomize.py) first on the bridge's PYTHONPATH")
    p.add_argument("--strict", action="store_true", help="exit 1 when any target is missed")
    p.add_argument("--profile-format", choices=["raw", "chrometrace"], default="raw",
                   help="raw = collapsed stacks; chrometrace = timestamped samples (bench.flame --from/--to)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory (logs, configs)")
    return p.parse_args(argv)


def scenarios_of(args: argparse.Namespace) -> tuple[str, list[Scenario]]:
    """The suite, or one custom scenario when any custom flag is given."""
    custom = any(getattr(args, k) is not None for k in
                 ("devices", "commands", "latency", "rate", "journal", "max_in_flight"))
    if custom:
        sc = Scenario(
            "custom", args.devices if args.devices is not None else 1000, commands=args.commands or 1,
            latency=args.latency or 0.0, runs=args.runs or 3, rate=args.rate or None,
            journal=True if args.journal is None else args.journal, max_in_flight=args.max_in_flight,
        )
        return "custom", [sc]
    chosen = SUITES[args.suite]
    if args.only:
        chosen = [s for s in chosen if any(o in s.name for o in args.only)]
    if args.runs:
        chosen = [Scenario(**{**asdict(s), "runs": args.runs, "target": s.target}) for s in chosen]
    return args.suite, chosen


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    suite, chosen = scenarios_of(args)
    if not chosen:
        print("no scenario selected", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            print(f"--set wants SECTION.KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides[key] = yaml.safe_load(raw)
    info = machine_info()
    print(f"machine: {info['nproc']} CPU {info['cpu_model']}, Python {info['python']}, {info['mosquitto']}")
    started = dt.datetime.now().astimezone()
    results: list[dict[str, Any]] = []
    interrupted = False
    broker_conf = "\n".join(([] if args.stock_broker else [BROKER_TUNING]) + args.broker_conf)
    with Cleanup() as cleanup:
        root = new_workdir(cleanup, args.keep)
        try:
            for sc in chosen:
                results.append(
                    run_scenario(cleanup, root, sc, args.profile, overrides, args.tap, args.profile_format,
                                 args.warmup, broker_conf, args.bridge_nodelay, args.inject)
                )
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: cleaning up", file=sys.stderr)
    if not results:
        return 130 if interrupted else 1
    md = markdown(results, info, suite, broker_conf)
    data = {"suite": suite, "overrides": overrides, "warmup": args.warmup, "broker_conf": broker_conf,
            "bridge_nodelay": args.bridge_nodelay,
            "started": started.isoformat(), "interrupted": interrupted,
            "machine": info, "argv": sys.argv[1:], "results": results}
    path, md_path = write_results(f"bench-{suite}-{started:%Y%m%d-%H%M%S}", data, md)
    print("\n" + md)
    print(f"saved {path} and {md_path}")
    if interrupted:
        return 130
    # Lost or duplicated states and failed runs are bugs; a missed time target fails only with --strict.
    broken = any(r["summary"]["lost"] or r["summary"]["duplicates"] or r["summary"]["failed_runs"]
                 or r["summary"]["not_ok"] for r in results)
    missed = any(r["summary"]["verdict"] == "MISS" for r in results)
    return 1 if broken or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
