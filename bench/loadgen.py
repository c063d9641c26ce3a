"""The load generator: one MQTT 5 client in its own process.

`python -m bench.loadgen --port P --base B --devices N --commands K [--rate R]`

Protocol with the parent, one JSON object per line on stdout:

1. it connects, subscribes to `<base>/+/capture/state` and `<base>/bridge/state`
   (QoS 1, SUBACK awaited), waits for the retained `{"state":"online"}` and
   prints `{"event": "ready"}`;
2. it waits for a line `go` on stdin (the parent reads the bridge's CPU clock
   in between), then publishes one `{"request_id": ...}` command per device,
   round-robin K times, as fast as it can (burst) or at R per second (steady);
3. it waits until every command has a final state (status != pending) or the
   deadline passes, then `--grace` seconds more to catch duplicates, and prints
   `{"event": "result", ...}` with the raw latencies.

Every time is `time.perf_counter()` in this process, so publish and arrival
times share one clock.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions


def emit(event: str, **data: Any) -> None:
    """One line of JSON to the parent."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


@dataclass
class Tally:
    """What came back, filled in from paho's network thread."""

    sent: dict[str, float] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    pending_at: list[float] = field(default_factory=list)
    unknown: int = 0
    malformed: int = 0
    wrong_device: int = 0
    finals: int = 0
    expected: int = 0


class LoadGen:
    """Publishes commands and matches their final states by request_id."""

    def __init__(self, host: str, port: int, base: str, *, nodelay: bool = True) -> None:
        self.base = base
        self.online_topic = f"{base}/bridge/state"
        self.state_filter = f"{base}/+/capture/state"
        self.tally = Tally()
        self.online = threading.Event()
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-loadgen-{uuid.uuid4().hex[:12]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        # The generator must never be the bottleneck: no client-side cap on QoS 1 messages in flight.
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.ReceiveMaximum = 65535  # let the broker send us states without waiting for PUBACKs
        props.SessionExpiryInterval = 0
        self.client.connect(host, port, keepalive=120, clean_start=True, properties=props)
        sock = self.client.socket()
        if nodelay and isinstance(sock, socket.socket):
            # paho leaves Nagle on: a command would wait for the ACK of our last PUBACK (delayed ACK, ~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        t = self.tally
        topic = msg.topic
        if topic == self.online_topic:
            try:
                if json.loads(msg.payload).get("state") == "online":
                    self.online.set()
            except (ValueError, AttributeError):
                pass
            return
        try:
            data = json.loads(msg.payload)
            status = data["status"]
        except (ValueError, KeyError, TypeError):
            t.malformed += 1
            return
        if status == "pending":
            t.pending += 1
            t.pending_at.append(now)
            return
        rid = data.get("request_id")
        if rid not in t.sent:
            t.unknown += 1
            return
        if data.get("device") != topic.split("/")[-3]:
            t.wrong_device += 1
        seen = t.arrivals.get(rid)
        if seen is None:
            t.arrivals[rid] = [now]
            t.statuses[status] += 1
            if data.get("error"):
                t.errors[str(data["error"])] += 1
            t.finals += 1
            if t.finals >= t.expected:
                self.done.set()
        else:
            seen.append(now)

    def prepare(self, timeout: float) -> None:
        """Connect, subscribe (SUBACK awaited), wait for the bridge's retained `online`."""
        if not self.connected.wait(timeout):
            raise TimeoutError("load generator could not connect to the broker")
        opts = SubscribeOptions(qos=1)
        self.client.subscribe([(self.state_filter, opts), (self.online_topic, opts)])
        if not self.subscribed.wait(timeout):
            raise TimeoutError("no SUBACK")
        if not self.online.wait(timeout):
            raise TimeoutError("the bridge never said online")

    def warm_up(self, count: int, timeout: float) -> None:
        """A burst to `count` other devices, awaited, then forgotten: fills the bridge's connection pool."""
        if count <= 0:
            return
        self.run(count, 1, None, timeout, 0.2, "warmup")
        self.tally = Tally()
        self.done.clear()

    def run(
        self,
        devices: int,
        commands: int,
        rate: float | None,
        deadline: float,
        grace: float,
        tag: str,
        detail: bool = False,
    ) -> dict[str, Any]:
        """Publish everything, wait for the states, return the raw numbers."""
        ids = [str(uuid.uuid4()) for _ in range(devices)]
        plan: list[tuple[str, bytes, str]] = []
        device_of: dict[str, str] = {}
        for k in range(commands):
            for i, device in enumerate(ids):
                rid = f"{tag}-{k}-{i}"
                device_of[rid] = device
                plan.append((f"{self.base}/{device}/capture/set", json.dumps({"request_id": rid}).encode(), rid))
        t = self.tally
        t.expected = len(plan)
        if not plan:
            self.done.set()
        sent = t.sent
        publish = self.client.publish
        start = time.perf_counter()
        if rate:
            interval = 1.0 / rate
            for n, (topic, payload, rid) in enumerate(plan):
                delay = start + n * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent[rid] = time.perf_counter()
                publish(topic, payload, qos=1)
        else:
            for topic, payload, rid in plan:
                sent[rid] = time.perf_counter()
                publish(topic, payload, qos=1)
        last_publish = time.perf_counter()
        completed = self.done.wait(deadline)
        if completed and grace > 0:
            time.sleep(grace)  # duplicates arrive after the first final state
        first = min(sent.values()) if sent else start
        arrivals = t.arrivals
        latencies = [arrivals[rid][0] - sent[rid] for rid in sent if rid in arrivals]
        last_arrival = max((a[0] for a in arrivals.values()), default=first)
        duplicates = sum(len(a) - 1 for a in arrivals.values())
        finals_at = sorted(a[0] - first for a in arrivals.values())
        pending_at = sorted(x - first for x in t.pending_at)
        detail_rows = (
            [[device_of[rid], sent[rid], arrivals[rid][0] if rid in arrivals else None] for rid, *_ in
             ((p[2],) for p in plan)]
            if detail else []
        )
        return {
            # With --detail: [device, publish time, first final state time] per command, in publish order.
            "requests": detail_rows,
            "published": len(plan),
            "t0": first,  # perf_counter == CLOCK_MONOTONIC: comparable with bench.cloudtap
            "publish_seconds": last_publish - first,
            "completed": completed,
            "received_final": len(arrivals),
            "lost": len(plan) - len(arrivals),
            "duplicates": duplicates,
            "duplicate_requests": sum(1 for a in arrivals.values() if len(a) > 1),
            "pending_seen": t.pending,
            "unknown": t.unknown,
            "malformed": t.malformed,
            "wrong_device": t.wrong_device,
            "statuses": dict(t.statuses),
            "errors": dict(t.errors),
            "total_seconds": last_arrival - first,
            "latencies": latencies,
            # When states arrived, in seconds since the first publish: min, deciles, max.
            "final_timeline": _deciles(finals_at),
            "pending_timeline": _deciles(pending_at),
            "cpu_seconds": time.process_time(),
        }

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def _deciles(sorted_values: list[float]) -> list[float]:
    if not sorted_values:
        return []
    n = len(sorted_values) - 1
    return [round(sorted_values[round(n * q / 10)], 4) for q in range(11)]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.loadgen`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0, help="commands per second; 0 = burst")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds after the last publish")
    parser.add_argument("--grace", type=float, default=1.0, help="seconds to wait for duplicates")
    parser.add_argument("--tag", default=uuid.uuid4().hex[:8], help="request_id prefix")
    parser.add_argument("--nagle", action="store_true", help="leave Nagle's algorithm on (paho's default)")
    parser.add_argument("--detail", action="store_true", help="return per-command times (for bench.cloudtap)")
    parser.add_argument("--warmup", type=int, default=0, help="commands to other devices before 'ready'")
    parser.add_argument("--no-wait-go", action="store_true", help="start at once instead of waiting for 'go'")
    args = parser.parse_args(argv)

    gen = LoadGen(args.host, args.port, args.base, nodelay=not args.nagle)
    try:
        gen.prepare(60.0)
        gen.warm_up(args.warmup, args.deadline)
        emit("ready")
        if not args.no_wait_go:
            line = sys.stdin.readline()
            if line.strip() != "go":
                return 1
        result = gen.run(args.devices, args.commands, args.rate or None, args.deadline, args.grace, args.tag,
                         args.detail)
        emit("result", **result)
    except TimeoutError as exc:
        emit("error", message=str(exc))
        return 1
    finally:
        gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
