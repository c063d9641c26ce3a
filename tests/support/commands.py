"""Capture commands over MQTT, as a client sends them, and recognising the bridge's answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.probe import Probe, Received

ONLINE = b'{"state":"online"}'


def is_online(base: str) -> Callable[[Received], bool]:
    """Matches a live (not retained) `online` on the bridge's availability topic."""
    topic = f"{base}/bridge/state"
    return lambda m: m.topic == topic and m.payload == ONLINE and not m.retain


def send(probe: Probe, base: str, device: str, payload: bytes | str | dict[str, Any], *, timeout: float = 15.0,
         **kw: Any) -> dict[str, Any]:
    """Publish one command and return its final state (waiting up to `timeout` seconds for it)."""
    state_topic = f"{base}/{device}/capture/state"
    probe.subscribe(state_topic)
    before = len([m for m in probe.on_topic(state_topic) if m.payload and m.json()["status"] != "pending"])
    probe.publish(f"{base}/{device}/capture/set", payload, **kw)
    return probe.final_states(state_topic, count=before + 1, timeout=timeout)[-1]


def finals_by_request(probe: Probe, base: str, *, with_retained: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Final (non-pending) states seen on the state topics under `base`, grouped by request_id.

    Only states published live unless `with_retained`: a retained copy repeats one seen before.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for m in list(probe.messages):
        if m.topic.startswith(base + "/") and m.topic.endswith("/capture/state") and m.payload:
            state = m.json()
            if state["status"] != "pending" and (with_retained or not m.retain):
                out.setdefault(str(state["request_id"]), []).append(state)
    return out


def final_for(base: str, device: str, request_id: str) -> Callable[[Received], bool]:
    """Matches the live final state of one command."""
    def check(m: Received) -> bool:
        return (m.topic == f"{base}/{device}/capture/state" and bool(m.payload) and not m.retain
                and m.json().get("request_id") == request_id and m.json()["status"] != "pending")
    return check


def settings_of(probe: Probe, base: str, device: str) -> dict[str, Any]:
    """The device's settings as last seen on its `capture/settings` topic ({} when none)."""
    found = [m for m in probe.on_topic(f"{base}/{device}/capture/settings") if m.payload]
    return dict(found[-1].json()) if found else {}
