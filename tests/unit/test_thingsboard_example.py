"""examples/thingsboard/ read offline: its topics are the bridge's, its RPCs make commands the bridge takes.

`make tb-check` runs the same files with the real ThingsBoard IoT Gateway; these tests catch a
drift from the bridge's topics and payloads without it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bridge.core import topics
from bridge.core.command import decode_payload, parse_command
from bridge.core.errors import InvalidCommand
from bridge.core.settings import parse_settings_payload
from bridge.core.state import Context, pending_state
from bridge.features.results import result_topic
from checks.tb_check import CONNECTOR_FILE, GATEWAY_VERSION

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thingsboard"
BASE = "devices"  # the base topic the example is written for (the bridge's default)
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def connector() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLE / CONNECTOR_FILE).read_text())
    return data


def rpc(method: str) -> dict[str, Any]:
    """The serverSideRpc entry the gateway picks for a method: the first whose methodFilter matches."""
    entries = connector()["requestsMapping"]["serverSideRpc"]
    return next(e for e in entries if re.search(e["methodFilter"], method))


def topic_of(expression: str, device: str, rpc_id: int) -> str:
    """A topic expression filled in as the gateway fills it."""
    return expression.replace("${deviceName}", device).replace("${requestId}", str(rpc_id))


def value_of(expression: str, rpc_id: int, params: dict[str, Any]) -> bytes:
    """A valueExpression filled in as the gateway (3.8.5) does: each ${path} into the RPC's data as JSON,
    or, when the path finds nothing, the placeholder's own text as a JSON string."""
    data = {"id": rpc_id, "method": "m", "params": params}

    def fill(match: re.Match[str]) -> str:
        value: Any = data
        for key in match.group(1).split("."):
            if not isinstance(value, dict) or key not in value:
                return json.dumps(match.group(0))
            value = value[key]
        return json.dumps(value)
    return PLACEHOLDER.sub(fill, expression).encode()


def device_name(expression: str, topic: str) -> str | None:
    """What the gateway takes as the device name from a topic (`deviceNameExpressionSource: topic`)."""
    found = re.search(expression, topic)
    return found.group(0) if found else None


def test_the_gateway_config_loads_the_connector_file() -> None:
    main = json.loads((EXAMPLE / "tb_gateway.json").read_text())
    assert main["connectors"] == [{"type": "mqtt", "name": "capture-bridge", "configuration": CONNECTOR_FILE}]
    assert main["thingsboard"]["remoteConfiguration"] is False  # the files here stay what runs


def test_states_are_mapped_from_the_state_topic_with_the_device_from_the_topic() -> None:
    [mapping] = connector()["mapping"]
    assert mapping["topicFilter"] == topics.state_topic(BASE, "+")
    expression = mapping["converter"]["deviceInfo"]["deviceNameExpression"]
    assert device_name(expression, topics.state_topic(BASE, "truck-12")) == "truck-12"
    assert device_name(expression, topics.settings_topic(BASE, "truck-12")) is None


def test_every_mapped_key_is_a_field_of_the_state_and_telemetry_takes_its_timestamp() -> None:
    state = pending_state(Context("truck-12", "a64b2e58-9305-4a01-9c51-092205123945", "r-1"))
    converter = connector()["mapping"][0]["converter"]
    for entry in converter["attributes"] + converter["timeseries"]:
        assert PLACEHOLDER.fullmatch(entry["value"]).group(1) in state, entry  # type: ignore[union-attr]
    # Without tsField the gateway sends the state's ISO string as the ts; with it, milliseconds.
    assert {e.get("tsField") for e in converter["timeseries"]} == {"${timestamp}"}
    assert "timestamp" in state


def test_devices_are_connected_from_their_retained_settings() -> None:
    [connect] = connector()["requestsMapping"]["connectRequests"]
    assert connect["topicFilter"] == topics.settings_topic(BASE, "+")
    expression = connect["deviceInfo"]["deviceNameExpression"]
    assert device_name(expression, topics.settings_topic(BASE, "van-3")) == "van-3"


def test_capture_is_a_two_way_rpc_answered_on_the_result_topic_of_its_rpc_id() -> None:
    entry = rpc("capture")
    assert (entry["type"], entry["qos"], entry["retain"]) == ("twoWay", 1, False)
    assert topic_of(entry["requestTopicExpression"], "truck-12", 7) == topics.command_topic(BASE, "truck-12")
    assert topic_of(entry["responseTopicExpression"], "truck-12", 7) == result_topic(BASE, "truck-12", "7")
    assert entry["responseTimeout"] >= 30_000  # a capture may take the cloud's 15 s, plus retries
    command = parse_command(decode_payload(value_of(entry["valueExpression"], 7, {"type": "video"})))
    assert command.request_id == "7"


def test_capture_video_takes_its_duration_from_the_params_and_a_missing_one_is_named() -> None:
    entry = rpc("capture_video")
    assert (entry["type"], entry["qos"], entry["retain"]) == ("twoWay", 1, False)
    assert topic_of(entry["responseTopicExpression"], "van-3", 9) == result_topic(BASE, "van-3", "9")
    command = parse_command(decode_payload(value_of(entry["valueExpression"], 9, {"duration": 15})))
    assert (command.request_id, command.type, command.duration) == ("9", 2, 15)
    with pytest.raises(InvalidCommand, match=r"^duration: must be an integer$"):
        parse_command(decode_payload(value_of(entry["valueExpression"], 9, {})))


def test_capture_settings_is_a_one_way_rpc_whose_params_are_the_settings_change() -> None:
    entry = rpc("capture_settings")
    assert (entry["type"], entry["qos"], entry["retain"]) == ("oneWay", 1, False)
    assert "responseTopicExpression" not in entry
    assert topic_of(entry["requestTopicExpression"], "truck-12", 8) == topics.settings_set_topic(BASE, "truck-12")
    payload = value_of(entry["valueExpression"], 8, {"resolution": "1080p", "count": 3})
    assert parse_settings_payload(payload) == {"resolution": "1080p", "count": 3}


@pytest.mark.parametrize("method", ["capture", "capture_video", "capture_settings"])
def test_each_method_has_its_own_entry(method: str) -> None:
    assert rpc(method)["methodFilter"] == f"^{method}$"


def test_the_guide_names_the_gateway_version_the_check_runs() -> None:
    assert GATEWAY_VERSION in (EXAMPLE / "README.md").read_text()
