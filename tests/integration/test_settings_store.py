"""What users chose lives in the bridge's own store: restarts, fleets, forgeries and floods (real broker, real bridge).

The numbers these tests measure are printed (`pytest -s`) and quoted in docs/performance.md.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.core import topics
from bridge.sim.behaviours import Behaviour
from bridge.sim.server import MockCloud
from tests.support.bridge_proc import BridgeProcess, StartBridge, log_lines
from tests.support.broker import Broker
from tests.support.commands import final_for, settings_of
from tests.support.configs import GUIDS, fresh_guids
from tests.support.probe import Probe, Received
from tests.support.settings_record import peak_rss_mb, write_older_journal
from tests.support.waits import wait_until

GUID = GUIDS[Behaviour.OK]


def live_on(topic: str) -> Any:
    return lambda m: m.topic == topic and not m.retain


def request_of(probe: Probe, base: str, device: str, request_id: str, timeout: float = 20) -> dict[str, Any]:
    probe.subscribe(f"{base}/{device}/capture/state")
    probe.publish(f"{base}/{device}/capture/set", {"request_id": request_id})
    request: dict[str, Any] = probe.wait_for(final_for(base, device, request_id), timeout=timeout)[-1].json()["request"]
    return request


def test_a_change_through_any_spelling_while_the_bridge_is_down_survives_two_restarts(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    lone = str(uuid.uuid4())  # a GUID-only device
    overrides = {"devices": {"truck-12": GUID, "van-3": GUIDS[Behaviour.BUSY]}}
    bridge = start_bridge(overrides)
    probe.subscribe(f"{base_topic}/+/capture/settings")
    probe.publish(topics.settings_set_topic(base_topic, "truck-12"), {"resolution": "1080p"})
    probe.publish(topics.settings_set_topic(base_topic, "van-3"), {"count": 4})
    probe.publish(topics.settings_set_topic(base_topic, lone), {"count": 3})
    wait_until(lambda: settings_of(probe, base_topic, "van-3").get("count") == 4
               and settings_of(probe, base_topic, lone).get("count") == 3, 10, "the settings shown")
    assert bridge.stop() == 0

    # While it is down, queued for its session: truck-12 changed through its GUID in upper case, and
    # the GUID-only device through another spelling of its own.
    probe.publish(topics.settings_set_topic(base_topic, GUID.upper()), {"interval": 5})
    probe.publish(topics.settings_set_topic(base_topic, lone.upper()), {"type": "video"})
    for restart in range(3):
        bridge = start_bridge(overrides)
        truck = request_of(probe, base_topic, "truck-12", f"t{restart}")
        assert (truck["FResolution"], truck["FInterval"]) == (3, 5)  # one device, whichever id named it
        assert request_of(probe, base_topic, GUID.upper(), f"g{restart}")["FInterval"] == 5
        assert request_of(probe, base_topic, "van-3", f"v{restart}")["FCount"] == 4
        single = request_of(probe, base_topic, lone, f"l{restart}")
        assert (single["FType"], single["FDuration"]) == (2, 10)  # the queued change, on top of count 3
        assert settings_of(probe, base_topic, "truck-12")["interval"] == 5
        assert bridge.stop() == 0
    assert not [t for t in {m.topic for m in probe.messages} if t == f"{base_topic}/bridge/settings"]


@pytest.mark.timeout(300)
def test_five_thousand_configured_devices_keep_their_settings_over_a_restart(
    start_bridge: StartBridge, probe: Probe, broker: Broker, base_topic: str, cloud: MockCloud
) -> None:
    cloud.default_behaviour = "ok"
    guids = fresh_guids(5000)
    devices = {f"cam-{i}": guid for i, guid in enumerate(guids)}
    overrides = {"devices": devices}
    probe.subscribe(f"{base_topic}/+/capture/settings")
    bridge = start_bridge(overrides)
    # Half of them through their GUID in upper case: settings belong to the device.
    infos = [probe.client.publish(topics.settings_set_topic(base_topic, device if i % 2 else guids[i].upper()),
                                  json.dumps({"count": i % 5 + 2, "resolution": "1080p"}), qos=1)
             for i, device in enumerate(devices)]
    for info in infos:
        info.wait_for_publish(30)

    def shown() -> int:
        return sum(1 for m in probe.messages if m.retain is False and m.topic.endswith("/capture/settings")
                   and m.topic.split("/")[1].startswith("cam-"))

    wait_until(lambda: shown() >= 5000, 120, lambda: f"{shown()} of 5000 settings shown")
    latencies = []
    timer = Probe(broker.port)  # a client of its own: the main probe holds 15,000 messages by now
    try:
        for i in range(20):  # one at a time: publish -> the device's retained settings
            topic = topics.settings_topic(base_topic, f"cam-{i}")
            timer.subscribe(topic)
            started = time.monotonic()
            timer.publish(topics.settings_set_topic(base_topic, f"cam-{i}"), {"interval": i + 1})
            timer.wait_for(live_on(topic), timeout=10)
            latencies.append(time.monotonic() - started)
    finally:
        timer.close()
    assert bridge.stop() == 0

    marker = len(probe.messages)
    started = time.monotonic()
    bridge = start_bridge(overrides)
    online = time.monotonic() - started
    sample = random.sample(range(5000), 10)
    # A client of its own: the main probe, receiving the 5,000 settings published again, rescans
    # 20,000 messages at each arrival and can fall 20 s behind on this shared machine.
    answers = Probe(broker.port)
    try:
        for i in sample:
            request = request_of(answers, base_topic, f"cam-{i}", f"r{i}")
            assert (request["FCount"], request["FResolution"]) == (i % 5 + 2, 3), i
            if i < 20:
                assert request["FInterval"] == i + 1
    finally:
        answers.close()
    wait_until(lambda: len({m.topic for m in probe.messages[marker:] if m.topic.endswith("/capture/settings")})
               >= 5000, 60, "every device's settings published again")
    republished = {m.topic.split("/")[1]: m.json() for m in probe.messages[marker:]
                   if m.topic.endswith("/capture/settings") and m.payload}
    assert all(republished[f"cam-{i}"]["count"] == i % 5 + 2 for i in range(5000))
    print(f"\n5,000 devices: settings round trip median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms; restart to online {online:.2f} s; "
          f"peak RSS {peak_rss_mb(proc_pid(bridge)):.0f} MiB")


def proc_pid(bridge: BridgeProcess) -> int:
    assert bridge.proc is not None
    return bridge.proc.pid


def hostile_memory(entries: int) -> bytes:
    """A retained settings memory as a hostile client would leave it: huge, keys with `/`, junk values."""
    body = ",".join(f'"k{i}":{{"count":{i % 7}}}' for i in range(entries))
    return ('{"x/../../elsewhere":{"count":2},"truck-12/capture":{"count":2},"+":"junk","truck-12":'
            '{"count":1,"resolution":"360p"},' + body + "}").encode()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("protocol", "upgrade"), [("5", False), ("3.1.1", False), ("3.1.1", True)])
def test_a_forged_marker_and_a_hostile_memory_published_while_down_change_nothing(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path,
    protocol: str, upgrade: bool
) -> None:
    cloud.default_behaviour = "ok"
    overrides: dict[str, Any] = {"mqtt": {"protocol": protocol}}
    if upgrade:
        # A run elsewhere makes the broker keep a session for us; then the first start after an upgrade
        # (an older bridge's journal, no settings store yet): the one run that reads the legacy memory.
        bridge = start_bridge({**overrides, "bridge": {"journal_path": str(tmp_path / "before" / "j.sqlite")}})
        assert bridge.stop() == 0
        write_older_journal(tmp_path / "journal.sqlite")
    else:
        bridge = start_bridge(overrides)
        probe.subscribe(f"{base_topic}/truck-12/capture/settings")
        probe.publish(topics.settings_set_topic(base_topic, "truck-12"), {"resolution": "1080p", "count": 4})
        wait_until(lambda: settings_of(probe, base_topic, "truck-12").get("count") == 4, 10, "the settings shown")
        assert bridge.stop() == 0

    memory_topic = f"{base_topic}/bridge/settings"
    probe.publish(topics.bridge_sync_topic(base_topic, f"bridge-{base_topic}"), b"sync")  # forged marker
    probe.client.publish(memory_topic, hostile_memory(1_000_000), qos=1, retain=True).wait_for_publish(60)
    probe.subscribe(f"{base_topic}/truck-12/capture/state")
    probe.publish(f"{base_topic}/truck-12/capture/set", {"request_id": "queued"})
    try:
        started = time.monotonic()
        bridge = start_bridge(overrides, wait_online=False)
        state = probe.wait_for(final_for(base_topic, "truck-12", "queued"), timeout=20)[-1].json()
        answered = time.monotonic() - started
        peak = peak_rss_mb(proc_pid(bridge))
    finally:
        probe.client.publish(memory_topic, b"", qos=1, retain=True).wait_for_publish(10)
    expected = (1, 2) if upgrade else (4, 3)  # an upgrade with a refused memory: defaults, not the forgery's
    assert (state["request"]["FCount"], state["request"]["FResolution"]) == expected
    assert answered < 10
    assert peak < 200, f"peak RSS {peak:.0f} MiB"
    if upgrade:
        assert log_lines(bridge, "not read")  # refused before parsing, and said so
    else:
        assert peak < 100, f"peak RSS {peak:.0f} MiB: the memory reached the bridge"  # ~55 when it does not
    print(f"\nhostile memory over MQTT {protocol}{' (upgrade)' if upgrade else ''}: queued command answered "
          f"{answered:.2f} s after start, peak RSS {peak:.0f} MiB")


def test_past_the_cap_a_new_guid_gets_one_warning(
    start_bridge: StartBridge, probe: Probe, base_topic: str
) -> None:
    bridge = start_bridge({"bridge": {"max_guid_settings": 2}})
    guids = fresh_guids(5)
    probe.subscribe(f"{base_topic}/+/capture/settings")
    for guid in guids:
        probe.publish(topics.settings_set_topic(base_topic, guid), {"count": 3})
    wait_until(lambda: all(probe.on_topic(topics.settings_topic(base_topic, g)) for g in guids), 10,
               "every device answered")
    kept = [g for g in guids if settings_of(probe, base_topic, g).get("count") == 3]
    assert kept == guids[:2]
    assert all(not m.retain for g in guids[2:] for m in probe.on_topic(topics.settings_topic(base_topic, g)))
    assert len(log_lines(bridge, "refused: 2 GUID-only devices")) == 1


def state_latency(message: Received, sent_at: dict[str, float]) -> float:
    state = message.json()
    made = datetime.fromisoformat(state["timestamp"].replace("Z", "+00:00")).timestamp()
    return made - sent_at[state["request_id"]]


@pytest.mark.timeout(300)
def test_captures_stay_fast_while_thirty_thousand_guids_get_fifty_settings_a_second(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    # 30,000 GUID devices remembered by an older bridge (its retained memory, read once at the upgrade;
    # 10,000 kept by the cap), then 50 settings changes a second across all 30,000 while captures run.
    cloud.default_behaviour = "ok"
    guids = fresh_guids(30_000)
    memory = json.dumps({guid: {"count": 2} for guid in guids}).encode()
    probe.client.publish(f"{base_topic}/bridge/settings", memory, qos=1, retain=True).wait_for_publish(30)
    write_older_journal(tmp_path / "journal.sqlite")
    probe.subscribe(f"{base_topic}/+/capture/settings")
    started = time.monotonic()
    bridge = start_bridge()
    online = time.monotonic() - started

    def republished() -> int:
        return sum(1 for m in probe.messages if m.topic.endswith("/capture/settings") and not m.retain)

    # Measured apart: at start the bridge publishes every remembered device's settings once (bulk).
    wait_until(lambda: republished() >= 10_000, 60, lambda: f"{republished()} of 10,000 settings published")
    settled = time.monotonic() - started
    probe.subscribe(f"{base_topic}/+/capture/state")
    sent_at: dict[str, float] = {}
    seconds, rng = 15, random.Random(7)
    begin = time.monotonic()
    tick = 0
    while time.monotonic() - begin < seconds:
        for _ in range(5):  # 50 a second
            guid = rng.choice(guids)
            probe.client.publish(topics.settings_set_topic(base_topic, guid), json.dumps({"count": rng.randint(1, 5)}))
        request_id = f"c{tick}"
        sent_at[request_id] = time.time()
        probe.client.publish(f"{base_topic}/{guids[tick % 100]}/capture/set", json.dumps({"request_id": request_id}))
        tick += 1
        time.sleep(max(0.0, begin + tick * 0.1 - time.monotonic()))  # ok: pacing the load, not waiting for it
    finals = probe.wait_for(lambda m: m.topic.endswith("/capture/state") and not m.retain and bool(m.payload)
                            and m.json().get("request_id") in sent_at and m.json()["status"] != "pending",
                            count=len(sent_at), timeout=60)
    latencies = sorted(state_latency(m, sent_at) for m in finals)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
    print(f"\n30,000 GUIDs, 50 settings/s for {seconds} s: {len(latencies)} captures, latency p50 "
          f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; start with the import {online:.2f} s, every setting "
          f"published {settled:.2f} s; "
          f"peak RSS {peak_rss_mb(proc_pid(bridge)):.0f} MiB")
    assert p99 < 1.0
    assert log_lines(bridge, "imported the settings of 10000 device(s)")
    assert len(log_lines(bridge, "refused: 10000 GUID-only devices")) == 1
    assert not probe.on_topic(f"{base_topic}/bridge/settings") or not probe.on_topic(
        f"{base_topic}/bridge/settings")[-1].payload


def test_a_settings_file_deleted_while_the_bridge_runs_is_written_again(
    start_bridge: StartBridge, probe: Probe, base_topic: str, cloud: MockCloud, tmp_path: Path
) -> None:
    cloud.default_behaviour = "ok"
    bridge = start_bridge()
    probe.subscribe(f"{base_topic}/truck-12/capture/settings")
    probe.publish(topics.settings_set_topic(base_topic, "truck-12"), {"count": 4})
    wait_until(lambda: settings_of(probe, base_topic, "truck-12").get("count") == 4, 10, "the settings shown")
    for suffix in ("", "-wal", "-shm"):  # a clean-up script
        Path(f"{tmp_path / 'journal.settings.sqlite'}{suffix}").unlink(missing_ok=True)
    bridge.wait_log("was deleted; wrote again the settings of the 1 device(s)", timeout=10)
    assert bridge.stop() == 0
    start_bridge()
    assert request_of(probe, base_topic, "truck-12", "after")["FCount"] == 4
