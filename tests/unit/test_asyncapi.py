"""docs/asyncapi.yaml against the code: topic builders, the error vocabulary, and real payloads.

The document is validated structurally (AsyncAPI 3.0's required parts, every reference
resolves) and every schema in it is checked with jsonschema against what the code produces:
states of every outcome, settings, commands, availability and info.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema.exceptions import ValidationError

from bridge.config import Config
from bridge.core import state as states
from bridge.core import topics
from bridge.core.command import parse_command
from bridge.core.errors import CloudError, ErrorCode, InvalidCommand, UnknownDevice
from bridge.core.reply import DeviceReply, InstructionReply
from bridge.core.settings import SettingsStore, built_in, encode
from bridge.features.availability import OFFLINE, ONLINE, Availability, last_will
from bridge.features.info import info_payload
from bridge.features.results import result_topic
from tests.support.asyncapi import DOC, validator
from tests.support.features import Sent, recorder

GUID = "a64b2e58-9305-4a01-9c51-092205123945"


def resolve(ref: str) -> Any:
    node: Any = DOC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_document_is_asyncapi_3_and_every_reference_resolves() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(DOC["info"])
    for ref in refs(DOC):
        resolve(ref)  # KeyError if it points nowhere
    for name, operation in DOC["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        assert operation["channel"]["$ref"].startswith("#/channels/"), name
        assert operation["bindings"]["mqtt"]["qos"] in (0, 1, 2), name
    operated = {op["channel"]["$ref"].rsplit("/", 1)[1] for op in DOC["operations"].values()}
    assert operated == set(DOC["channels"])  # every channel is read or written


def test_channel_addresses_are_the_codes_topics() -> None:
    base, device = "{base}", "{id}"
    addresses = {name: channel["address"] for name, channel in DOC["channels"].items()}
    assert addresses == {
        "command": topics.command_topic(base, device),
        "state": topics.state_topic(base, device),
        "result": result_topic(base, device, "{request_id}"),
        "settingsSet": topics.settings_set_topic(base, device),
        "settings": topics.settings_topic(base, device),
        "availability": topics.availability_topic(base),
        "instanceAvailability": topics.instance_state_topic(base, "{client_id}"),
        "instanceInfo": topics.instance_info_topic(base, "{client_id}"),
        "info": topics.bridge_info_topic(base),
        "rejected": topics.rejected_topic(base),
    }


def test_retain_flags_are_what_the_bridge_publishes() -> None:
    retain = {name: op["bindings"]["mqtt"]["retain"] for name, op in DOC["operations"].items()}
    assert retain["sendState"] is True
    assert retain["sendSettings"] is True
    assert retain["sendAvailability"] is True
    assert retain["sendResult"] is False
    assert retain["sendRejected"] is False


def test_the_error_vocabulary_and_statuses_are_the_codes() -> None:
    properties = DOC["components"]["schemas"]["state"]["properties"]
    assert set(properties["error"]["enum"]) == {None} | {code.value for code in ErrorCode}
    assert properties["status"]["enum"] == [states.PENDING, states.OK, states.BUSY, states.ERROR]


def sample_states() -> list[dict[str, Any]]:
    request = parse_command({"type": "photo", "count": 3, "interval": 2}).api_params()
    ctx = states.Context("truck-12", GUID, "r-1", request)
    text = "(804250900200,1,001,CAMERA,9,4,{answer},700160818000_1769373855)"
    found = [states.pending_state(ctx)]
    for answer in (0, 1, 2):
        reply = InstructionReply("ins send ok", "804250900200", text.format(answer=answer),
                                 DeviceReply(answer, "804250900200", "700160818000_1769373855"))
        found.append(states.reply_state(ctx, reply))
    for code in ErrorCode:
        found.append(states.error_state(ctx, CloudError(code, f"{code.value} happened", result=105)))
    found.append(states.error_state(states.Context("nobody"), UnknownDevice("device 'nobody' is not configured")))
    found.append(states.error_state(states.Context("truck-12", request_id="r-2"), InvalidCommand("count: no")))
    return found


@pytest.mark.parametrize("state", sample_states(), ids=lambda s: f"{s['status']}-{s['error']}")
def test_every_state_the_code_makes_fits_the_schema(state: dict[str, Any]) -> None:
    validator("state").validate(json.loads(states.encode(state)))


def test_settings_and_commands_fit_their_schemas() -> None:
    store = SettingsStore({"truck-12": GUID}, {"truck-12": {"resolution": "1080p"}})
    store.set(GUID.lower(), store.merged(GUID.lower(), {"count": 4}))
    published = json.loads(encode(store.current("truck-12")))
    validator("settings").validate(published)
    validator("command").validate(published)  # the published settings are themselves a command
    validator("command").validate(built_in())
    validator("command").validate({"FType": 3, "FCount": 2, "FDuration": 5, "FResolution": "480p",
                                   "camera": "top", "request_id": "r-1"})
    validator("settingsChange").validate({"count": 2, "FInterval": 5})
    with pytest.raises(ValidationError):
        validator("command").validate({"flash": True})
    with pytest.raises(ValidationError):
        validator("settingsChange").validate({"request_id": "r"})


def test_the_state_schema_refuses_what_no_state_looks_like() -> None:
    good = json.loads(states.encode(sample_states()[1]))
    for broken in ({**good, "status": "done"}, {**good, "extra": 1}, {k: v for k, v in good.items() if k != "code"},
                   {**good, "error": "oops"}, {**good, "timestamp": "yesterday"}):
        with pytest.raises(ValidationError):
            validator("state").validate(broken)


class Session:
    def another_instance(self, evidence: str) -> None:
        raise AssertionError(evidence)


def test_availability_and_info_fit_their_schemas() -> None:
    validator("availability").validate(json.loads(ONLINE))
    validator("availability").validate(json.loads(OFFLINE))
    group = Config.model_validate({"cloud": {"token": "t"}, "mqtt": {"shared_group": "g"}})
    validator("availability").validate(json.loads(last_will(group)[1]))
    sent: Sent = []
    feature = Availability(group, recorder(sent), Session())
    feature.listening(True)
    feature.stop()
    for _, payload, _ in sent:
        schema = "availability" if b"run" not in payload else "instanceAvailability"
        validator(schema).validate(json.loads(payload))
    validator("info").validate(json.loads(info_payload(3, 7)))
    with pytest.raises(ValidationError):
        validator("availability").validate({"state": "maybe"})
