"""`make tb-check`: examples/thingsboard/ with the real ThingsBoard IoT Gateway, RPCs as ThingsBoard sends them.

Not part of `make test`: the first run creates a cached virtualenv with the gateway from PyPI
(`TB_VENV`, default ~/.cache/capture-bridge/tb-gateway-<version>), which takes a minute.
Then it starts two private Mosquittos: the bridge's broker, and a stand-in for the ThingsBoard
server, which is an MQTT server to the gateway (`v1/gateway/...` topics). On the second, a
responder plays ThingsBoard: it answers the gateway's `getSessionLimits` request (the gateway
sends nothing until it has its limits) and publishes server-side RPCs on `v1/gateway/rpc` the
way ThingsBoard does. The mock cloud, the bridge (with `mqtt.result_topics`) and the gateway,
with the example's connector and gateway config pointed at those brokers, do the rest.
One PASS/FAIL line per check; exit status 1 on any FAIL.

On a plain broker the gateway also hears its own RPC replies on `v1/gateway/rpc` (ThingsBoard
never echoes them) and logs each as an RPC it cannot handle; that is the stand-in's doing.

    python -m checks.tb_check [--keep DIR]
"""

# A check runs real programs (pip, the gateway, the mock cloud, the bridge) with arguments it builds itself.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.core import topics
from bridge.features.results import result_topic
from checks.report import Report
from tests.support.bridge_proc import BridgeProcess
from tests.support.broker import Broker
from tests.support.cloud_proc import MockCloudProcess
from tests.support.waits import wait_until

GATEWAY_VERSION = "3.8.5"
# The gateway and its own MQTT client, pinned: the RPC and converter behaviour checked here is theirs.
REQUIREMENTS = [f"thingsboard-gateway=={GATEWAY_VERSION}", "tb-mqtt-client==1.13.13", "tb-paho-mqtt-client==2.1.2"]
TB_VENV = Path(os.environ.get("TB_VENV", f"~/.cache/capture-bridge/tb-gateway-{GATEWAY_VERSION}")).expanduser()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "thingsboard"
CONNECTOR_FILE = "capture-bridge.json"

BASE = "devices"  # the example's base topic
OK_GUID = "a64b2e58-9305-4a01-9c51-092205123945"  # the mock cloud answers ok
DEVICES = {"truck-12": OK_GUID, "trailer-7": OK_GUID}
TOKEN = "tb-check-gateway-token"  # noqa: S105 - the stand-in accepts any access token
GATEWAY_RPC = "v1/gateway/rpc"
SESSION_LIMITS = {  # what ThingsBoard answers to getSessionLimits: no limits worth the name
    "maxPayloadSize": 65536, "maxInflightMessages": 100,
    "rateLimits": {"messages": "200:1", "telemetryMessages": "200:1", "telemetryDataPoints": "2000:1"},
    "gatewayRateLimits": {"messages": "200:1", "telemetryMessages": "200:1", "telemetryDataPoints": "2000:1"},
}


def logs_json(path: Path) -> dict[str, Any]:
    """The gateway's logging config (its logs.json): everything at INFO into one file."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(name)s] %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain", "filename": str(path)}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }


# --- the pieces ----------------------------------------------------------------------------------


def ensure_gateway_venv() -> Path:
    """The cached virtualenv with the gateway; created on first use. Returns its `thingsboard-gateway`."""
    program = TB_VENV / "bin" / "thingsboard-gateway"
    marker = TB_VENV / ".tb-check-ready"
    if program.exists() and marker.exists() and marker.read_text() == " ".join(REQUIREMENTS):
        return program
    print(f"creating {TB_VENV} with {' '.join(REQUIREMENTS)} (takes a minute) ...", flush=True)
    if not TB_VENV.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TB_VENV)], check=True)
    pip = [str(TB_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    marker.write_text(" ".join(REQUIREMENTS))
    return program


@dataclass(frozen=True)
class Message:
    """One message as a recorder saw it, with the QoS it was delivered at."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    at: float

    def json(self) -> Any:
        """The payload as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.payload)
        except ValueError:
            return None


class Recorder:
    """A paho client on its own thread that keeps every message of its subscriptions (not its own)."""

    def __init__(self, port: int, filters: list[str], name: str) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._filters = filters
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise TimeoutError(f"{name}: not subscribed to {filters} after 10s")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        # noLocal: a client that also publishes (the stand-in's RPCs) does not record its own messages.
        client.subscribe([(f, SubscribeOptions(qos=1, noLocal=True)) for f in self._filters])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic()))

    def select(self, keep: Callable[[Message], bool]) -> list[Message]:
        """The messages so far that `keep` accepts."""
        with self._lock:
            return [m for m in self.messages if keep(m)]

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """Publish at QoS 1 and wait until the broker has it."""
        self.client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect and stop the thread."""
        self.client.disconnect()
        self.client.loop_stop()


class StandInThingsBoard(Recorder):
    """ThingsBoard's side of the gateway's MQTT session: records it, answers getSessionLimits, sends RPCs."""

    def __init__(self, port: int) -> None:
        super().__init__(port, ["v1/#"], "thingsboard")
        self.limits_asked = threading.Event()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        super()._on_message(client, userdata, msg)
        prefix = "v1/devices/me/rpc/request/"
        if msg.topic.startswith(prefix) and b"getSessionLimits" in msg.payload:
            number = msg.topic[len(prefix):]
            client.publish(f"v1/devices/me/rpc/response/{number}", json.dumps(SESSION_LIMITS), qos=1)
            self.limits_asked.set()

    def rpc(self, device: str, rpc_id: int, method: str, params: dict[str, Any]) -> float:
        """A server-side RPC to a device behind the gateway, as ThingsBoard publishes it; when it was sent."""
        self.publish(GATEWAY_RPC, {"device": device, "data": {"id": rpc_id, "method": method, "params": params}})
        return time.monotonic()

    def replies(self, device: str, rpc_id: int) -> list[Message]:
        """The gateway's replies to one RPC (its requests never come back here: noLocal)."""
        return self.select(lambda m: m.topic == GATEWAY_RPC and _is_reply(m.json(), device, rpc_id))

    def reply(self, device: str, rpc_id: int, timeout: float) -> Any:
        """Wait for the gateway's reply to one RPC; its `data`."""
        wait_until(lambda: bool(self.replies(device, rpc_id)), timeout, f"the gateway's reply to RPC {rpc_id}")
        return self.replies(device, rpc_id)[0].json()["data"]

    def telemetry(self, device: str) -> list[dict[str, Any]]:
        """Every telemetry entry the gateway sent for a device."""
        entries: list[dict[str, Any]] = []
        for message in self.select(lambda m: m.topic == "v1/gateway/telemetry"):
            body = message.json()
            if isinstance(body, dict) and isinstance(body.get(device), list):
                entries.extend(body[device])
        return entries


def _is_reply(body: Any, device: str, rpc_id: int) -> bool:
    return isinstance(body, dict) and body.get("device") == device and body.get("id") == rpc_id and "data" in body


class Gateway:
    """The ThingsBoard IoT Gateway with the example's configs, pointed at the check's two brokers."""

    def __init__(self, program: Path, workdir: Path, broker_port: int, thingsboard_port: int) -> None:
        self.program = program
        self.workdir = workdir
        self.config_dir = workdir / "config"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        main = json.loads((EXAMPLE / "tb_gateway.json").read_text())
        main["thingsboard"].update(host="127.0.0.1", port=thingsboard_port)
        main["thingsboard"]["security"]["accessToken"] = TOKEN
        connector = json.loads((EXAMPLE / CONNECTOR_FILE).read_text())
        connector["broker"].update(host="127.0.0.1", port=broker_port)
        (self.config_dir / "tb_gateway.json").write_text(json.dumps(main, indent=2))
        (self.config_dir / CONNECTOR_FILE).write_text(json.dumps(connector, indent=2))
        (self.config_dir / "logs.json").write_text(json.dumps(logs_json(workdir / "gateway.log")))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (returns at once)."""
        # The gateway lets `host`, `port` and `accessToken` variables override its config: not here.
        env = {k: v for k, v in os.environ.items() if k not in ("host", "port", "accessToken")}
        env["TB_GW_CONFIG_DIR"] = str(self.config_dir)
        self._out = (self.workdir / "gateway.stdout").open("ab")
        self.proc = subprocess.Popen([str(self.program)], cwd=self.workdir, env=env, stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 20 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self._out.close()

    def log_text(self) -> str:
        """What the gateway logged so far."""
        path = self.workdir / "gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_lines(self, level: str) -> list[str]:
        """The gateway's log lines of one level."""
        return [line for line in self.log_text().splitlines() if f" {level} " in line]


# --- the checks ------------------------------------------------------------------------------------


_Stoppable = TypeVar("_Stoppable", Broker, MockCloudProcess, Gateway)


class Scenario:
    """The processes of one run and the checks on what passes between them."""

    def __init__(self, workdir: Path, report: Report, gateway: Path) -> None:
        self.workdir = workdir
        self.report = report
        self.bridge: BridgeProcess | None = None
        self._cleanups: list[Callable[[], object]] = []  # in reverse order of start, by stop()
        try:
            self.broker = self._started(Broker(workdir / "broker").start())
            # ThingsBoard sends an RPC only once the gateway has subscribed to them: the log shows when.
            self.tb_broker = self._started(Broker(workdir / "thingsboard", extra="log_type subscribe").start())
            self.cloud = self._started(MockCloudProcess(workdir, "--latency", "1"))  # 1 s: RPCs 0.5 s apart overlap
            self.watch = Recorder(self.broker.port, [f"{BASE}/#"], "watch")
            self._cleanups.append(self.watch.close)
            self.thingsboard = StandInThingsBoard(self.tb_broker.port)
            self._cleanups.append(self.thingsboard.close)
            self.gateway = self._started(Gateway(gateway, workdir / "gateway", self.broker.port, self.tb_broker.port))
        except BaseException:
            self.stop()
            raise
        self.bridge_config: dict[str, Any] = {
            "mqtt": {"url": self.broker.url, "client_id": "capture-bridge", "base_topic": BASE,
                     "reconnect_min": 0.2, "reconnect_max": 1.0, "result_topics": True},
            "cloud": {"base_url": self.cloud.url, "token": "tb-check"},
            "devices": DEVICES,
            "bridge": {"journal_path": str(workdir / "journal.sqlite"), "shutdown_timeout": 5},
            "homeassistant": {"enabled": False},
        }

    def _started(self, thing: _Stoppable) -> _Stoppable:
        self._cleanups.append(thing.stop)
        return thing

    def start_bridge(self) -> None:
        """Start the bridge and wait until it says online."""
        self.bridge = BridgeProcess(self.workdir / "bridge", self.bridge_config).start()
        wait_until(lambda: self.bridge_state() == "online", 30, "the bridge says online")

    def bridge_state(self) -> str | None:
        """What the bridge last said on its availability topic."""
        states = self.watch.select(lambda m: m.topic == topics.availability_topic(BASE))
        return states[-1].json().get("state") if states else None

    def commands(self, device: str, request_id: str) -> list[Message]:
        """What reached the bridge's broker on a device's command topic for one request."""
        return self.watch.select(lambda m: m.topic == topics.command_topic(BASE, device)
                                 and (m.json() or {}).get("request_id") == request_id)

    def final_state(self, device: str, request_id: str, timeout: float = 30) -> dict[str, Any]:
        """The final state of one request on the device's state topic."""
        def finals() -> list[dict[str, Any]]:
            states = [m.json() for m in self.watch.select(lambda m: m.topic == topics.state_topic(BASE, device))]
            return [s for s in states if s and s.get("request_id") == request_id and s.get("status") != "pending"]
        wait_until(lambda: bool(finals()), timeout, f"the final state of {device} {request_id}")
        return finals()[0]

    def stop(self) -> None:
        """Stop everything this scenario started, the last started first."""
        if self.bridge is not None:
            self.bridge.stop()
        while self._cleanups:
            self._cleanups.pop()()


def _ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def check_start(s: Scenario) -> None:
    """The gateway connects, gets its limits, and knows every device before any capture."""
    s.gateway.start()

    def limits() -> str:
        if not s.thingsboard.limits_asked.wait(60):
            raise TimeoutError("no getSessionLimits request from the gateway after 60s")
        return "answered"
    s.report.run("the gateway asks the stand-in ThingsBoard for its session limits", limits)

    def connected() -> str:
        def names() -> set[str]:
            connects = s.thingsboard.select(lambda m: m.topic == "v1/gateway/connect")
            return {str((m.json() or {}).get("device")) for m in connects} & set(DEVICES)
        wait_until(lambda: names() == set(DEVICES), 60, lambda: f"devices connected: {sorted(names())}")
        return ", ".join(sorted(names()))
    s.report.run("every configured device is connected from the retained settings (connectRequests)", connected)

    def subscribed() -> str:
        wait_until(lambda: f" {GATEWAY_RPC}" in s.tb_broker.log_text(), 60, f"the gateway subscribed to {GATEWAY_RPC}")
        # It subscribes before it has an RPC handler: an RPC before "Gateway started." is dropped unanswered.
        wait_until(lambda: "Gateway started." in s.gateway.log_text(), 60, "the gateway's log says it started")
        return "and has started"
    s.report.run(f"the gateway subscribes to {GATEWAY_RPC}", subscribed)


def check_two_way(s: Scenario, device: str, rpc_id: int) -> float:
    """One twoWay `capture`: one QoS 1 command, the reply is the final state, telemetry with a numeric ts."""
    sent = s.thingsboard.rpc(device, rpc_id, "capture", {})
    rid = str(rpc_id)
    state: dict[str, Any] = {}

    def reply() -> str:
        data = s.thingsboard.reply(device, rpc_id, 60)
        state.update(s.final_state(device, rid))
        assert data == state, f"reply {data} != final state {state}"
        results = s.watch.select(lambda m: m.topic == result_topic(BASE, device, rid))
        assert [m.json() for m in results] == [state], f"result topic carried {[m.payload for m in results]}"
        return f"status {data['status']}, {s.thingsboard.replies(device, rpc_id)[0].at - sent:.1f}s after the RPC"
    s.report.run(f"twoWay capture RPC {rpc_id}: the reply is the final state", reply)

    def command() -> str:
        found = s.commands(device, rid)
        assert len(found) == 1, f"{len(found)} commands"
        assert (found[0].qos, found[0].retain) == (1, False), f"qos {found[0].qos}, retain {found[0].retain}"
        return found[0].payload.decode()
    s.report.run(f"RPC {rpc_id}: exactly one command on {topics.command_topic(BASE, device)}, QoS 1", command)

    def telemetry() -> str:
        def mine() -> list[dict[str, Any]]:
            return [e for e in s.thingsboard.telemetry(device) if e.get("values", {}).get("request_id") == rid
                    and e["values"].get("status") == state.get("status")]
        wait_until(lambda: bool(mine()), 15, f"telemetry for {device} {rid}")
        entry = mine()[0]
        assert isinstance(entry["ts"], int), f"ts {entry['ts']!r}"
        assert entry["ts"] == _ms(state["timestamp"]), f"ts {entry['ts']} != {state['timestamp']}"
        return f"ts {entry['ts']} = {state['timestamp']}"
    s.report.run(f"RPC {rpc_id}: telemetry with the state's timestamp as a numeric ts (ms)", telemetry)

    def attributes() -> str:
        def sent_attributes() -> list[dict[str, Any]]:
            bodies = [m.json() for m in s.thingsboard.select(lambda m: m.topic == "v1/gateway/attributes")]
            return [b[device] for b in bodies if isinstance(b, dict) and isinstance(b.get(device), dict)]
        want = {"asset_guid": state.get("asset_guid"), "terminal_num": state.get("terminal_num")}
        wait_until(lambda: want in sent_attributes(), 15, lambda: f"attributes {want} in {sent_attributes()}")
        return json.dumps(want)
    s.report.run(f"RPC {rpc_id}: the device's attributes from the state", attributes)
    return sent


def check_settings(s: Scenario, device: str, rpc_id: int) -> None:
    """A oneWay `capture_settings`: one QoS 1 settings change, acknowledged at once, applied by the bridge."""
    params = {"resolution": "1080p", "count": 3}
    s.thingsboard.rpc(device, rpc_id, "capture_settings", params)

    def settings() -> str:
        data = s.thingsboard.reply(device, rpc_id, 30)
        # The gateway sends a oneWay acknowledgement as a JSON string in `data`.
        ack = json.loads(data) if isinstance(data, str) else data
        assert ack == {"success": True}, f"reply {data!r}"
        sets = s.watch.select(lambda m: m.topic == topics.settings_set_topic(BASE, device))
        assert [(m.json(), m.qos, m.retain) for m in sets] == [(params, 1, False)], f"{sets}"
        def applied() -> bool:
            now = s.watch.select(lambda m: m.topic == topics.settings_topic(BASE, device))
            return bool(now) and now[-1].json().get("resolution") == "1080p" and now[-1].json().get("count") == 3
        wait_until(applied, 15, f"{device}'s settings show 1080p, 3 photos")
        return f"reply {json.dumps(data)}; {sets[0].payload.decode()} at QoS 1"
    s.report.run(f"oneWay capture_settings RPC {rpc_id}: one QoS 1 change, acknowledged, applied", settings)


def check_overlap(s: Scenario, device: str, first: int) -> None:
    """Two RPCs 0.5 s apart on one device, each answered with its own final state."""
    sent = [s.thingsboard.rpc(device, first, "capture", {})]
    time.sleep(0.5)  # ok: the spacing under test, not a synchronisation
    sent.append(s.thingsboard.rpc(device, first + 1, "capture", {}))

    def own_results() -> str:
        replies = [s.thingsboard.reply(device, n, 60) for n in (first, first + 1)]
        for n, data in zip((first, first + 1), replies, strict=True):
            assert data == s.final_state(device, str(n)), f"RPC {n} answered with {data}"
            assert len(s.commands(device, str(n))) == 1, f"RPC {n}: {len(s.commands(device, str(n)))} commands"
        sent = replies[0]["request"]
        assert (sent["FResolution"], sent["FCount"]) == (3, 3), f"the settings were not used: {sent}"
        return ", ".join(f"RPC {n}: request_id {d['request_id']} {d['status']}"
                         for n, d in zip((first, first + 1), replies, strict=True)) + ", with the new settings"
    s.report.run(f"two capture RPCs 0.5 s apart ({first}, {first + 1}): each answered with its own result",
                   own_results)


def check_video(s: Scenario, device: str, rpc_id: int) -> None:
    """`capture_video`: a field from the RPC's params; without it, the bridge's answer names what is missing."""
    s.thingsboard.rpc(device, rpc_id, "capture_video", {"duration": 15})
    s.thingsboard.rpc(device, rpc_id + 1, "capture_video", {})

    def video() -> str:
        data = s.thingsboard.reply(device, rpc_id, 60)
        assert data == s.final_state(device, str(rpc_id)), f"reply {data}"
        request = data["request"]
        assert (data["status"], request["FType"], request["FDuration"]) == ("ok", 2, 15), f"{data}"
        return f"status ok, FType 2, FDuration 15, from {s.commands(device, str(rpc_id))[0].payload.decode()}"
    s.report.run(f"capture_video RPC {rpc_id} with a duration: a 15 s video", video)

    def missing() -> str:
        data = s.thingsboard.reply(device, rpc_id + 1, 60)
        assert (data["error"], data["request_id"]) == ("invalid_payload", str(rpc_id + 1)), f"{data}"
        assert "duration" in data["message"], data["message"]
        return f"{data['error']}: {data['message']}"
    s.report.run(f"capture_video RPC {rpc_id + 1} without one: answered invalid_payload naming it", missing)


def check_bridge_down(s: Scenario, device: str, rpc_id: int) -> None:
    """An RPC while the bridge is down waits on its persistent session and is answered once it is back."""
    assert s.bridge is not None
    s.bridge.stop()
    wait_until(lambda: s.bridge_state() == "offline", 15, "the bridge says offline")
    s.thingsboard.rpc(device, rpc_id, "capture", {})

    def queued() -> str:
        wait_until(lambda: bool(s.commands(device, str(rpc_id))), 15, "the command on the broker")
        assert s.commands(device, str(rpc_id))[0].qos == 1, "published at QoS 0: lost while the bridge is down"
        assert not s.thingsboard.replies(device, rpc_id), "answered while the bridge was down"
        return "published at QoS 1 while the bridge is down, no reply yet"
    s.report.run(f"RPC {rpc_id} while the bridge is down: the command waits on the broker", queued)
    time.sleep(3)  # ok: the bridge stays down a while, as in a redeploy
    s.start_bridge()

    def answered() -> str:
        data = s.thingsboard.reply(device, rpc_id, 60)
        assert data == s.final_state(device, str(rpc_id)), f"reply {data}"
        assert len(s.commands(device, str(rpc_id))) == 1, f"{len(s.commands(device, str(rpc_id)))} commands"
        return f"status {data['status']}, request_id {data['request_id']}"
    s.report.run(f"RPC {rpc_id}: answered with its final state once the bridge is back", answered)


def show_one_rpc(s: Scenario, device: str, rpc_id: int, sent: float) -> None:
    """Print one RPC as the stand-in ThingsBoard saw it: what it sent, then what it received until the reply."""
    request = {"device": device, "data": {"id": rpc_id, "method": "capture", "params": {}}}
    replied = s.thingsboard.replies(device, rpc_id)[0].at
    print(f"--- RPC {rpc_id}: the stand-in ThingsBoard sent, then received:", flush=True)
    print(f"sent     {GATEWAY_RPC} (QoS 1): {json.dumps(request, separators=(',', ':'))}", flush=True)
    def about_it(m: Message) -> bool:
        mine = m.topic != GATEWAY_RPC or _is_reply(m.json(), device, rpc_id)
        return mine and sent <= m.at <= replied + 0.5 and m.topic.startswith("v1/gateway/")
    for m in s.thingsboard.select(about_it):
        print(f"received {m.topic} (QoS {m.qos}): {m.payload.decode()}", flush=True)
    print("---", flush=True)


def run_checks(workdir: Path) -> int:
    """The whole scenario; returns the number of failed checks."""
    report = Report()
    scenario = Scenario(workdir, report, ensure_gateway_venv())
    try:
        scenario.start_bridge()
        check_start(scenario)
        first_sent = check_two_way(scenario, "truck-12", 1)
        check_settings(scenario, "truck-12", 2)
        check_overlap(scenario, "truck-12", 3)
        check_video(scenario, "trailer-7", 5)
        check_bridge_down(scenario, "trailer-7", 7)
        time.sleep(2)  # ok: a late duplicate command would show up in this window
        report.run("one command per RPC over the whole run", lambda: _one_each(scenario))
        show_one_rpc(scenario, "truck-12", 1, first_sent)
        # Its own replies, echoed by the stand-in broker, are the only RPCs the gateway may fail to handle.
        echoes = ("Error during handling RPC request", "Error while processing RPC request")
        errors = [line for line in scenario.gateway.log_lines("ERROR") if not line.endswith(echoes)]
        report.check(f"no other ERROR in the gateway's log (gateway {GATEWAY_VERSION})", not errors,
                     f"{len(errors)}: {errors[:3]}" if errors else "")
    except Exception as exc:  # a broken setup step is one more FAIL, with what happened
        report.check("the scenario ran to its end", False, f"{type(exc).__name__}: {exc}"[:600])
    finally:
        scenario.stop()
    return report.failed


def _one_each(s: Scenario) -> str:
    wanted = {"truck-12": ["1", "3", "4"], "trailer-7": ["5", "6", "7"]}
    counts = {f"{d}/{r}": len(s.commands(d, r)) for d, ids in wanted.items() for r in ids}
    every = s.watch.select(lambda m: m.topic.endswith("/" + topics.SET_SUFFIX))
    assert all(n == 1 for n in counts.values()), f"{counts}"
    assert len(every) == len(counts), f"{len(every)} commands in all for {len(counts)} RPCs"
    return f"{len(every)} commands for {len(counts)} capture RPCs"


def main() -> None:
    """Entry point of `make tb-check`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, configs)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="tb-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    failed = run_checks(workdir)
    took = time.monotonic() - started
    verdict = f"FAILED: {failed} failed check(s)" if failed else "OK: every check passed"
    print(f"{verdict} in {took:.0f}s" + (f"; logs in {workdir}" if failed or args.keep else ""), flush=True)
    if not failed and args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
