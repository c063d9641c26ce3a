"""The Home Assistant feature: discovery announcements, their clean-up, terminal numbers."""

from __future__ import annotations

import json
from typing import Any

from bridge.features.discovery import discovery_messages
from bridge.features.homeassistant import HomeAssistant
from tests.support.fakes import GUID, GUID2
from tests.support.features import Sent, config_of, recorder


def make(devices: dict[str, Any] | None = None, **bridge: Any) -> tuple[HomeAssistant, Sent]:
    sent: Sent = []
    return HomeAssistant(config_of(devices, **bridge), recorder(sent)), sent


def test_configs_no_longer_announced_are_cleared_once_ours() -> None:
    feature, sent = make({"truck-12": GUID, "van-3": GUID2})
    old = dict(discovery_messages(feature._config))
    feature, sent = make({"truck-12": GUID})
    feature.announce()
    announced = len(sent)
    for topic, payload in old.items():
        feature.on_discovery_config(topic, payload, True)
    cleared = [t for t, p, r in sent[announced:] if p == b"" and r]
    assert len(cleared) == 14
    assert all("/van-3_" in t for t in cleared)
    # Live copies (our own echoes) and empty payloads (our clearing) do nothing.
    feature.on_discovery_config("homeassistant/button/capture_bridge/van-3_capture/config", old[cleared[0]], False)
    feature.on_discovery_config(cleared[0], b"", True)
    # Someone else's config under our node id is left alone.
    foreign = json.dumps({"device": {"identifiers": ["x"], "via_device": "someone_else"}}).encode()
    feature.on_discovery_config("homeassistant/button/capture_bridge/zzz/config", foreign, True)
    assert len(sent) == announced + 14


def test_terminal_number_joins_the_serial_number_from_this_runs_answers_only() -> None:
    feature, sent = make()
    feature.announce()
    state = {"status": "ok", "terminal_num": "804250900200"}
    feature.observe_state("truck-12", json.dumps(state).encode())
    republished = [json.loads(p) for t, p, _ in sent[18:]]
    assert len(republished) == 14
    assert {p["device"]["serial_number"] for p in republished} == {f"804250900200 ({GUID})"}
    feature.observe_state("truck-12", json.dumps(state).encode())  # nothing new
    assert len(sent) == 18 + 14

    # A restarted bridge announces the GUID alone until the cloud names the terminal again: a
    # retained config, ours or forged, is never read back into the device's identity.
    forged = {t: p.replace(b"804250900200", b"666") for t, p, _ in sent}
    feature, sent = make()
    feature.announce()
    for topic, payload in forged.items():
        feature.on_discovery_config(topic, payload, True)
    assert len(sent) == 18
    assert {json.loads(p)["device"].get("serial_number") for t, p, _ in sent if "truck-12" in t} == {GUID}


def test_homeassistant_online_announces_again() -> None:
    feature, sent = make()
    feature.on_homeassistant_status(b"offline")
    assert sent == []
    feature.on_homeassistant_status(b"online")
    assert len(sent) == 18


def test_configs_still_announced_are_never_cleared_even_before_the_first_announcement() -> None:
    feature, sent = make({"truck-12": GUID})
    for topic, payload in discovery_messages(feature._config):
        feature.on_discovery_config(topic, payload, True)
    assert [t for t, p, _ in sent if p == b""] == []
