"""The result-topics feature: final states with a request_id, once, on the request's own topic."""

from __future__ import annotations

import json
from typing import Any

from bridge.config import Config
from bridge.features.results import ResultTopics, result_level


def make() -> tuple[ResultTopics, list[tuple[str, bytes, bool]]]:
    sent: list[tuple[str, bytes, bool]] = []

    def publish(topic: str, payload: bytes, *, qos: int | None = None, retain: bool = False, **kw: Any) -> bool:
        sent.append((topic, payload, retain))
        return True

    config = Config.model_validate({"cloud": {"token": "t"}, "mqtt": {"result_topics": True}})
    return ResultTopics(config, publish), sent


def state(**fields: Any) -> bytes:
    return json.dumps({"status": "ok", "error": None, "request_id": None, **fields}).encode()


def test_final_states_with_a_request_id_go_to_their_result_topic_not_retained() -> None:
    feature, sent = make()
    feature.observe_state("truck-12", state(request_id="r-1"))
    feature.observe_state("truck-12", state(status="error", error="invalid_payload", request_id="r-2"))
    assert [(t, r) for t, _, r in sent] == [
        ("devices/truck-12/capture/result/r-1", False),
        ("devices/truck-12/capture/result/r-2", False),
    ]
    assert json.loads(sent[1][1])["error"] == "invalid_payload"


def test_pending_states_and_states_without_request_id_go_nowhere() -> None:
    feature, sent = make()
    feature.observe_state("truck-12", state(status="pending", request_id="r-1"))
    feature.observe_state("truck-12", state())
    feature.observe_state("truck-12", b"not json")
    feature.observe_state("truck-12", b"[1]")
    assert sent == []


def test_a_request_id_is_one_topic_level() -> None:
    assert result_level("plain-id_1") == "plain-id_1"
    assert result_level("a/b+c#d%e") == "a%2Fb%2Bc%23d%25e"
    assert result_level("x\ny") == "x%0Ay"
    assert "/" not in result_level("/" * 10)
