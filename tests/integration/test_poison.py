"""Poison messages and faults thrown at the real bridge process through a real Mosquitto.

After each poison case a normal command still gets its state within seconds, and a restart
starts cleanly. The disk-full case mounts a small tmpfs (skipped, with the reason, where
mounting is not permitted).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.core.command import parse_command
from bridge.core.errors import InvalidCommand
from bridge.core.settings import built_in, parse_settings_payload
from bridge.sim.behaviours import Behaviour
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import BridgeProcess, StartBridge
from tests.support.broker import free_port
from tests.support.cli import bridge_cli
from tests.support.configs import GUIDS
from tests.support.http import http_answer, http_get, metric_value
from tests.support.probe import Probe, Received
from tests.support.waits import wait_until

MAX_TOPIC = 65535


def final_on(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic and bool(m.payload) and m.json().get("status") != "pending"


def still_serves(probe: Probe, base: str, cloud: MockCloud, timeout: float = 10.0) -> dict[str, Any]:
    """A normal command on a fresh device gets its ok state within seconds."""
    cloud.default_behaviour = "ok"
    guid = str(uuid.uuid4())
    rid = f"alive-{uuid.uuid4().hex[:8]}"
    probe.subscribe(f"{base}/{guid}/capture/state")
    probe.publish(f"{base}/{guid}/capture/set", {"request_id": rid})
    # [0]: a probe subscribed to `<base>/+/capture/state` too gets a copy per subscription.
    msg = probe.wait_for(final_on(f"{base}/{guid}/capture/state"), timeout=timeout)[0]
    state: dict[str, Any] = msg.json()
    assert state["status"] == "ok", state
    assert state["request_id"] == rid
    return state


def restart_cleanly(bridge: BridgeProcess, start_bridge: StartBridge, overrides: dict[str, Any]) -> BridgeProcess:
    """SIGTERM exits 0 without a traceback; the next start comes online and logs no traceback."""
    assert bridge.stop(timeout=20) == 0, bridge.log_text()[-3000:]
    assert "Traceback" not in bridge.log_text(), bridge.log_text()[-3000:]
    again = start_bridge(overrides)
    return again


def publish_raw(probe: Probe, topic: str, payload: bytes, *, qos: int = 1, props: Properties | None = None) -> None:
    info = probe.client.publish(topic, payload, qos=qos, properties=props)
    info.wait_for_publish(10)


def response_props(topic: str, correlation: bytes | None = None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


# --- 1. publishes paho refuses ------------------------------------------------------------------


def test_wildcard_response_topics_and_overlong_state_topics_do_not_stop_intake_or_restarts(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    port = free_port()
    overrides = {"metrics": {"port": port}}
    bridge = start_bridge(overrides)
    probe.subscribe(f"{base_topic}/+/capture/state")
    # More than Mosquitto's in-flight window (20): on the old code intake stopped after ~20.
    guids = [str(uuid.uuid4()) for _ in range(30)]
    for i, guid in enumerate(guids):
        topic = "replies/#" if i % 2 else "replies/+/x"
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"w{i}"}, response_topic=topic)
    for guid in guids:  # every one still answered, on its state topic
        probe.wait_for(final_on(f"{base_topic}/{guid}/capture/state"), timeout=15)

    # A device id whose state topic ("state" is 2 bytes longer than "set") passes 65,535 bytes.
    long_id = "a" * (MAX_TOPIC - len(f"{base_topic}//capture/set"))
    assert len(f"{base_topic}/{long_id}/capture/set") == MAX_TOPIC
    reply_to = f"replies/{base_topic}/long"
    probe.subscribe(reply_to)
    publish_raw(probe, f"{base_topic}/{long_id}/capture/set", b'{"request_id": "long"}',
                props=response_props(reply_to))
    # No state topic can carry it; the Response Topic can, so the answer goes there.
    [answer] = probe.wait_for(final_on(reply_to), timeout=10)
    assert answer.json()["error"] == "unknown_device"
    # Without one, the bridge's own topic answers it (not retained).
    probe.subscribe(f"{base_topic}/bridge/rejected")
    publish_raw(probe, f"{base_topic}/{long_id}/capture/set", b'{"request_id": "long-2"}')
    [rejected] = probe.wait_for(lambda m: m.topic == f"{base_topic}/bridge/rejected", timeout=10)
    assert (rejected.json()["request_id"], rejected.retain) == ("long-2", False)

    still_serves(probe, base_topic, cloud)
    assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    log = bridge.log_text()
    assert "has a wildcard" in log
    assert "Traceback" not in log
    bridge = restart_cleanly(bridge, start_bridge, overrides)
    still_serves(probe, base_topic, cloud)
    assert "Traceback" not in bridge.log_text()


# --- 2. lone surrogate --------------------------------------------------------------------------


def test_lone_surrogate_request_id_is_refused_and_never_fires(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    bridge = start_bridge()
    guid = str(uuid.uuid4())
    state_topic = f"{base_topic}/{guid}/capture/state"
    probe.subscribe(state_topic)
    publish_raw(probe, f"{base_topic}/{guid}/capture/set", b'{"request_id": "\\ud800"}')
    [msg] = probe.wait_for(final_on(state_topic))
    assert msg.json()["error"] == "invalid_payload"
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "next"})  # the device is not blocked
    assert probe.wait_for(final_on(state_topic), count=2)[1].json()["status"] == "ok"
    bridge = restart_cleanly(bridge, start_bridge, {})
    still_serves(probe, base_topic, cloud)
    assert len(cloud.instructions_for(guid)) == 1  # only "next", never the poisoned one, not at restart


# --- 3. disk full -------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs for the disk-full case: {done.stderr.strip() or done.returncode}"
        print(reason)
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_up(directory: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_disk_full_stops_acks_and_intake_says_so_and_recovers_by_itself(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    cloud.default_behaviour = "ok"
    with small_tmpfs(tmp_path / "small", "4m") as disk:
        port = free_port()
        overrides = {"metrics": {"port": port}, "bridge": {"journal_path": str(disk / "journal.sqlite")}}
        bridge = start_bridge(overrides)
        still_serves(probe, base_topic, cloud)
        filler = fill_up(disk)
        probe.subscribe(f"{base_topic}/+/capture/state")
        guids = [str(uuid.uuid4()) for _ in range(10)]
        pad = " " * 30_000  # valid JSON whitespace: each row needs fresh pages
        for i, guid in enumerate(guids):
            publish_raw(probe, f"{base_topic}/{guid}/capture/set", f'{{"request_id": "full-{i}"{pad}}}'.encode())
        bridge.wait_log("cannot be written")
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 503, what="healthz 503")
        assert metric_value(http_get(f"http://127.0.0.1:{port}/metrics")[1], "capture_bridge_journal_writable") == 0
        states_before = len([m for m in probe.messages if m.topic.endswith("/capture/state")])
        filler.unlink()  # space comes back: everything resumes without help
        for guid in guids:
            probe.wait_for(final_on(f"{base_topic}/{guid}/capture/state"), timeout=20)
        assert len([m for m in probe.messages if m.topic.endswith("/capture/state")]) >= states_before + 10
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, what="healthz 200")
        log = bridge.log_text()
        assert log.count("cannot be written") == 1  # said once
        assert "writable again" in log
        still_serves(probe, base_topic, cloud)
        bridge = restart_cleanly(bridge, start_bridge, overrides)
        still_serves(probe, base_topic, cloud)
        for guid in guids:  # each fired once: nothing again at restart
            assert len(cloud.instructions_for(guid)) == 1
        assert bridge.stop(timeout=20) == 0


def test_disk_full_at_shutdown_exits_without_a_traceback(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    cloud.default_behaviour = "ok"
    with small_tmpfs(tmp_path / "small", "4m") as disk:
        overrides = {"bridge": {"journal_path": str(disk / "journal.sqlite")}}
        bridge = start_bridge(overrides)
        fill_up(disk)
        pad = " " * 30_000
        for i in range(5):
            publish_raw(probe, f"{base_topic}/{uuid.uuid4()}/capture/set", f'{{"request_id": "s{i}"{pad}}}'.encode())
        bridge.wait_log("cannot be written")
        bridge.stop(timeout=20)
        assert "Traceback" not in bridge.log_text()


# --- 5. Response Topic policy -------------------------------------------------------------------


@pytest.mark.parametrize("target", ["{base}/dev-ok/capture/state", "{base}/bridge/state",
                                    "homeassistant/sensor/x/config", "$SYS/forged"])
def test_response_topic_cannot_make_the_bridge_a_confused_deputy(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, target: str
) -> None:
    cloud.default_behaviour = "ok"
    bridge = start_bridge()
    target = target.format(base=base_topic)
    if not target.startswith("$"):
        probe.subscribe(target)
    guid = str(uuid.uuid4())
    probe.subscribe(f"{base_topic}/{guid}/capture/state")
    probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": "deputy"}, response_topic=target)
    probe.wait_for(final_on(f"{base_topic}/{guid}/capture/state"))
    bridge.wait_log("Response Topic")
    assert "refused" in bridge.log_text()
    still_serves(probe, base_topic, cloud)
    assert not [m for m in probe.messages if m.topic == target and b"deputy" in m.payload]


# --- 8. smaller ---------------------------------------------------------------------------------


def test_newline_in_request_id_and_empty_device_id_are_one_log_line_each(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    bridge = start_bridge()
    probe.subscribe(f"{base_topic}/+/capture/state")
    publish_raw(probe, f"{base_topic}/no-such-device/capture/set",
                b'{"request_id": "r\\n2026-01-01 00:00:00,000 ERROR   bridge: FORGED"}')
    probe.wait_for(final_on(f"{base_topic}/no-such-device/capture/state"))
    publish_raw(probe, f"{base_topic}//capture/set", b"{}")
    bridge.wait_log("device id is empty")
    still_serves(probe, base_topic, cloud)
    lines = bridge.log_text().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")]
    assert [line for line in lines if "FORGED" in line and "\\n2026-01-01" in line]


def test_deleted_journal_is_recreated_and_a_crash_loses_nothing(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    cloud.default_behaviour = "ok"
    cloud.latency = 1.5
    overrides = {"bridge": {"max_in_flight": 64}}
    bridge = start_bridge(overrides)
    probe.subscribe(f"{base_topic}/+/capture/state")
    guids = [str(uuid.uuid4()) for _ in range(20)]
    for i, guid in enumerate(guids):
        probe.publish(f"{base_topic}/{guid}/capture/set", {"request_id": f"d{i}"})
    wait_until(lambda: sum(len(cloud.instructions_for(g)) for g in guids) == 20, what="all 20 at the cloud")
    journal = Path(bridge.config["bridge"]["journal_path"])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    bridge.wait_log("was deleted", timeout=10)
    assert journal.exists()
    bridge.kill()
    cloud.latency = 0.0
    start_bridge(overrides)
    for guid in guids:  # every in-flight command answered after the crash (run again: at least once)
        probe.wait_for(final_on(f"{base_topic}/{guid}/capture/state"), timeout=20)


def test_a_journal_that_cannot_be_opened_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = tmp_path / "bridge.yaml"
    config.write_text(f"cloud: {{token: t0k3n}}\nbridge: {{journal_path: {blocker / 'j.sqlite'}}}\n")
    done = bridge_cli("run", "--config", str(config))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "bridge.journal_path" in lines[0]


def test_oversized_payloads_are_refused_small_and_never_delivered_huge(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    bridge = start_bridge({"bridge": {"max_payload_bytes": 1024}})
    guid = str(uuid.uuid4())
    state_topic = f"{base_topic}/{guid}/capture/state"
    probe.subscribe(state_topic)
    publish_raw(probe, f"{base_topic}/{guid}/capture/set", b'{"request_id": "big"' + b" " * 5000 + b"}")
    [msg] = probe.wait_for(final_on(state_topic))
    assert msg.json()["error"] == "invalid_payload"
    # Over the limit but under the Maximum Packet Size the bridge tells the broker: answered.
    publish_raw(probe, f"{base_topic}/{guid}/capture/set", b'{"request_id": "2mb"' + b" " * 2_000_000 + b"}")
    assert probe.wait_for(final_on(state_topic), count=2)[-1].json()["error"] == "invalid_payload"
    for _ in range(5):  # past the Maximum Packet Size: never delivered
        publish_raw(probe, f"{base_topic}/{guid}/capture/set", b"{" + b" " * 5_000_000 + b"}")
    still_serves(probe, base_topic, cloud)
    assert len(probe.wait_for(final_on(state_topic), count=2)) == 2
    journal = Path(bridge.config["bridge"]["journal_path"])
    held = sum(Path(f"{journal}{s}").stat().st_size for s in ("", "-wal") if Path(f"{journal}{s}").exists())
    assert held < 1_000_000


# --- hostile retained discovery configs: identity and topics stay the bridge's own -------------------


class Watched:
    """What the bridge publishes live under its base topic and its discovery prefix, from a point on."""

    def __init__(self, watcher: Probe, base: str, prefix: str) -> None:
        self.watcher, self.base, self.prefix = watcher, base, prefix
        self.start = len(watcher.messages)

    def live(self) -> list[Received]:
        return [m for m in self.watcher.messages[self.start:] if not m.retain]

    def discovery(self) -> dict[str, bytes]:
        """Topic -> the last payload the bridge published there (live)."""
        return {m.topic: m.payload for m in self.live() if m.topic.startswith(self.prefix + "/")}


def settled(watched: Watched, probe: Probe, cloud: MockCloud) -> None:
    """A command answered, and its state seen by the watcher: what the bridge announced at start came first."""
    state_topic = f"{watched.base}/{still_serves(probe, watched.base, cloud, timeout=15)['device']}/capture/state"
    wait_until(lambda: any(m.topic == state_topic for m in watched.live()), 10, "the watcher caught up")


def own_topic(topic: str, base: str, devices: set[str]) -> bool:
    """One of a configured device's own topics, or the bridge's own."""
    if topic.startswith(f"{base}/bridge/"):
        return True
    level, _, rest = topic.removeprefix(base + "/").partition("/")
    fresh = len(level) == 36 and level.count("-") == 4  # the GUID topic id of still_serves' command
    return topic.startswith(base + "/") and rest.startswith("capture/") and (level in devices or fresh)


def assert_unchanged(watched: Watched, baseline: dict[str, bytes], hostile: dict[str, bytes],
                     devices: set[str]) -> None:
    """Every discovery config is what a clean start announces; a hostile config's own topic keeps what the
    hostile client wrote (not the bridge's: device discovery does not own `<prefix>/button/<node>/...`) or
    is cleared (one under a node the bridge owns), and the bridge writes nothing else there."""
    for topic, payload in watched.discovery().items():
        if topic in baseline:
            assert payload == baseline[topic], (topic, payload[:300])
        else:
            assert topic in hostile, topic
            assert payload in (b"", hostile[topic]), (topic, payload[:300])
    strays = {m.topic for m in watched.live()
              if not m.topic.startswith(watched.prefix + "/") and not own_topic(m.topic, watched.base, devices)}
    assert strays == set(), sorted(strays)[:10]


def forged(config: bytes, **device: Any) -> bytes:
    data = json.loads(config)
    data["device"] = {**data["device"], **device}
    return json.dumps(data).encode()


@pytest.mark.timeout(240)
def test_a_forged_retained_discovery_config_changes_no_device_identity(
    start_bridge: StartBridge, probe: Probe, broker: Any, base_topic: str, cloud: MockCloud
) -> None:
    """Published retained while the bridge is down: the next start announces exactly what a clean start does."""
    prefix = f"ha-{base_topic}"
    overrides = {"homeassistant": {"enabled": True, "prefix": prefix}}
    watcher = Probe(broker.port)
    watcher.subscribe(f"{prefix}/#")
    watcher.subscribe(f"{base_topic}/#")
    try:
        watched = Watched(watcher, base_topic, prefix)
        bridge = start_bridge(overrides)
        settled(watched, probe, cloud)
        baseline = watched.discovery()
        devices = set(bridge.config["devices"])
        truck = next(t for t, p in baseline.items() if b"truck-12" in t.encode() and b'"device"' in p)
        assert bridge.stop() == 0

        # The device's own identifiers, a serial number of the form the bridge itself writes.
        evil = forged(baseline[truck], serial_number="666 (forged)")
        probe.client.publish(truck, evil, qos=1, retain=True).wait_for_publish(10)
        watched = Watched(watcher, base_topic, prefix)
        bridge = start_bridge(overrides)
        settled(watched, probe, cloud)
        assert_unchanged(watched, baseline, {truck: evil}, devices)
        assert set(watched.discovery()) >= set(baseline)  # announced in full
        serials = {json.loads(p)["device"].get("serial_number") for p in watched.discovery().values() if p}
        assert not any("666" in str(s) for s in serials), serials
        assert "Traceback" not in bridge.log_text()
    finally:
        watcher.close()


hostile_configs = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"{}", b"[]", b'{"device": 1}', b'{"device": {"identifiers": "x"}}', b"[" * 5000]),
    st.fixed_dictionaries({}, optional={
        "serial_number": st.text(max_size=20).map(lambda t: f"{t} (x)"), "name": st.text(max_size=20),
        "identifiers": st.lists(st.text(max_size=30), max_size=2), "via_device": st.text(max_size=40),
    }),
)


@pytest.mark.timeout(300)
def test_fuzzed_retained_discovery_configs_and_memories_keep_identity_and_topics(
    start_bridge: StartBridge, probe: Probe, broker: Any, base_topic: str, cloud: MockCloud
) -> None:
    """A hostile retained discovery config (on a topic the bridge announces, or any other under its node
    id) or a hostile retained memory, published while the bridge is down: the next start announces what a
    clean start does and writes nothing outside its devices' own topics."""
    prefix = f"ha-{base_topic}"
    overrides = {"homeassistant": {"enabled": True, "prefix": prefix}}
    watcher = Probe(broker.port)
    watcher.subscribe(f"{prefix}/#")
    watcher.subscribe(f"{base_topic}/#")
    try:
        watched = Watched(watcher, base_topic, prefix)
        bridge = start_bridge(overrides)
        settled(watched, probe, cloud)
        baseline = watched.discovery()
        devices = set(bridge.config["devices"])
        announced = sorted(baseline)
        node = announced[0].split("/")[2]  # <prefix>/<component>/<node id>/<object id>/config

        @settings(max_examples=15, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(where=st.sampled_from(announced) | st.sampled_from(["x/y", "button/evil", "../z"]).map(
                   lambda obj: f"{prefix}/button/{node}/{obj}/config") | st.just("memory"),
               device=hostile_configs, memory=memories)
        def hostile(where: str, device: bytes | dict[str, Any], memory: bytes) -> None:
            nonlocal bridge
            assert bridge.stop(timeout=20) == 0
            if where == "memory":
                topic, payload = f"{base_topic}/bridge/settings", memory
            elif isinstance(device, dict):
                topic, payload = where, forged(baseline.get(where, baseline[announced[0]]), **device)
            else:
                topic, payload = where, device
            if not payload:
                return
            probe.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
            watched = Watched(watcher, base_topic, prefix)
            bridge = start_bridge(overrides)
            settled(watched, probe, cloud)
            assert_unchanged(watched, baseline, {topic: payload}, devices)
            assert set(watched.discovery()) >= set(baseline)
            probe.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)

        hostile()
        assert "Traceback" not in bridge.log_text(), bridge.log_text()[-3000:]
    finally:
        watcher.close()


# --- fuzz: payloads, topics and MQTT 5 properties ------------------------------------------------


def broker_accepts(char: str) -> bool:
    """Mosquitto disconnects a client whose topic or property holds a control or non-character."""
    return not (ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F) and unicodedata.category(char) != "Cn"


mqtt_chars = st.characters(codec="utf-8").filter(broker_accepts)
device_ids = st.text(mqtt_chars.filter(lambda c: c not in "/+#"), min_size=0, max_size=200)
payloads = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=10,
    ).map(lambda v: json.dumps({"request_id": "x", "junk": v}).encode()),
    st.sampled_from([b'{"request_id": "\\ud800"}', b'{"\\udfff": 1}', b"[" * 5000, b'{"count": 1e999}',
                     b'{"type": "video", "duration": 0}', b'{"request_id": "' + b"r" * 129 + b'"}']),
)
response_topics = st.one_of(
    st.none(),
    st.text(mqtt_chars, min_size=1, max_size=60),
    st.sampled_from(["#", "+", "a/#", "$SYS/x", "homeassistant/x/config", "{base}/bridge/state", "{long}"]),
)


@pytest.mark.timeout(240)
def test_fuzzed_commands_never_stop_the_bridge(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    port = free_port()
    overrides = {"metrics": {"port": port}}
    bridge = start_bridge(overrides)
    http_answer(f"http://127.0.0.1:{port}/healthz")

    # No shrinking: each example costs a round trip through the real bridge; the failing one is printed.
    @settings(max_examples=80, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(device=device_ids, payload=payloads, response_topic=response_topics,
           correlation=st.none() | st.binary(max_size=64),
           user=st.lists(st.tuples(st.text(mqtt_chars, max_size=10), st.text(mqtt_chars, max_size=10)), max_size=3),
           qos=st.sampled_from([0, 1]))
    def poison(device: str, payload: bytes, response_topic: str | None, correlation: bytes | None,
               user: list[tuple[str, str]], qos: int) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            # Placeholders, not the text itself: a 65 kB repr would make Hypothesis warn (an error here).
            named = {"{base}/bridge/state": f"{base_topic}/bridge/state", "{long}": "x" * 65000}
            props.ResponseTopic = named.get(response_topic, response_topic)
        if correlation is not None:
            props.CorrelationData = correlation
        if user:
            props.UserProperty = user
        topic = f"{base_topic}/{device}/capture/set"
        if len(topic.encode()) > MAX_TOPIC:
            return
        publish_raw(probe, topic, payload, qos=qos, props=props)
        still_serves(probe, base_topic, cloud, timeout=10)

    poison()
    assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert "Traceback" not in bridge.log_text(), bridge.log_text()[-3000:]
    bridge = restart_cleanly(bridge, start_bridge, overrides)
    still_serves(probe, base_topic, cloud)
    assert "Traceback" not in bridge.log_text()


memories = st.one_of(
    payloads,
    st.dictionaries(st.text(mqtt_chars, max_size=30) | st.sampled_from(["x/../../elsewhere", "+", "#", "a/b"]),
                    st.dictionaries(st.sampled_from(["count", "FCount", "resolution", "camera", "zoom"]),
                                    st.integers(-5, 500) | st.text(max_size=6), max_size=3) | st.integers(),
                    max_size=30).map(lambda d: json.dumps(d).encode()),
    # Valid changes too: queued on settings/set they are a user's choice and must apply, on top.
    st.sampled_from([b'{"count": 7}', b'{"FResolution": 0, "interval": 2}', b'{"type": "video"}']),
)
TRUCK = GUIDS[Behaviour.OK]  # truck-12's GUID in tests/support/configs.py


def chosen_request(choices: dict[str, Any]) -> dict[str, Any]:
    """What a bare command on a device with these settings sends."""
    return parse_command({**built_in(), **choices}).api_params()


@pytest.mark.timeout(300)
def test_fuzzed_start_up_inputs_published_while_the_bridge_is_down(
    start_bridge: StartBridge, probe: Probe, broker: Any, base_topic: str, cloud: MockCloud
) -> None:
    """A forged marker, a hostile retained memory or settings change, queued or retained while the bridge
    is down: the next start answers commands within seconds, writes only to its own trees, and runs
    captures on exactly what users chose (a queued valid change on settings/set is a user's choice)."""
    cloud.default_behaviour = "ok"
    overrides = {"homeassistant": {"enabled": True, "prefix": f"ha-{base_topic}"}}
    bridge = start_bridge(overrides)
    client_id = f"bridge-{base_topic}"
    chosen: dict[str, Any] = {"resolution": "1080p", "count": 4}
    probe.subscribe(f"{base_topic}/truck-12/capture/settings")
    probe.publish(f"{base_topic}/truck-12/capture/settings/set", chosen)
    probe.wait_for(lambda m: m.topic.endswith("/truck-12/capture/settings") and b'"count":4' in m.payload)
    watcher = Probe(broker.port)
    watcher.subscribe("#")
    try:
        @settings(max_examples=14, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(target=st.sampled_from(["marker", "memory", "settings", "guid-settings"]), payload=memories,
               retain=st.booleans())
        def hostile(target: str, payload: bytes, retain: bool) -> None:
            nonlocal bridge
            assert bridge.stop(timeout=20) == 0
            topic = {"marker": f"{base_topic}/bridge/sync/{client_id}", "memory": f"{base_topic}/bridge/settings",
                     "settings": f"{base_topic}/truck-12/capture/settings/set",
                     "guid-settings": f"{base_topic}/{TRUCK.upper()}/capture/settings/set"}[target]
            publish_raw(probe, topic, payload, qos=1)
            if retain:
                probe.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
            if target.endswith("settings"):
                with contextlib.suppress(InvalidCommand):  # the queued live copy is a change like any other
                    chosen.update(parse_settings_payload(payload))
            bridge = start_bridge(overrides)
            still_serves(probe, base_topic, cloud, timeout=15)
            rid = f"chosen-{uuid.uuid4().hex[:8]}"
            probe.subscribe(f"{base_topic}/truck-12/capture/state")
            probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": rid})
            state = probe.wait_for(lambda m: final_on(f"{base_topic}/truck-12/capture/state")(m)
                                   and m.json().get("request_id") == rid, timeout=15)[0].json()
            assert state["request"] == chosen_request(chosen), (target, payload[:200], retain)
            if retain:
                probe.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)

        hostile()
        ours = (f"{base_topic}/", f"ha-{base_topic}/")
        # Live messages only (retained ones of earlier tests arrive at subscription); the test's own
        # probes publish nothing outside the base topic either: anything here is the bridge's.
        others = {m.topic for m in watcher.messages if not m.retain and not m.topic.startswith(ours)}
        assert others == set(), sorted(others)[:10]
        assert any(m.topic.startswith(ours) and not m.retain for m in watcher.messages)  # it did watch the bridge
        assert "Traceback" not in bridge.log_text(), bridge.log_text()[-3000:]
    finally:
        watcher.close()
