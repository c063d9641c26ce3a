"""The Supervisor's MQTT service answer -> the broker the bridge connects to."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.addon.supervisor import parse_service
from bridge.core.errors import ConfigError


def answer(**data: Any) -> dict[str, Any]:
    return {"result": "ok", "data": {"host": "core-mosquitto", "port": 1883, "ssl": False, "protocol": "3.1.1",
                                     "username": "addons", "password": "pw", "addon": "core_mosquitto", **data}}


def test_plain_service_is_mqtt_url_with_credentials() -> None:
    broker = parse_service(answer())
    assert broker.url == "mqtt://core-mosquitto:1883"
    assert (broker.username, broker.password) == ("addons", "pw")


def test_ssl_is_mqtts_and_ipv6_is_bracketed() -> None:
    assert parse_service(answer(ssl=True, port=8883)).url == "mqtts://core-mosquitto:8883"
    assert parse_service(answer(host="fd00::5")).url == "mqtt://[fd00::5]:1883"


def test_empty_credentials_mean_none() -> None:
    broker = parse_service(answer(username="", password=None))
    assert broker.username is None
    assert broker.password is None


@pytest.mark.parametrize(("body", "line"), [
    ({"result": "ok"}, "answered without data"),
    (answer(host=""), "has no host"),
    (answer(port=0), "has a bad port: 0"),
    (answer(port="1883"), "has a bad port: '1883'"),
    (answer(ssl="yes"), "has a bad ssl flag"),
    ([], "answered without data"),
])
def test_a_strange_answer_is_one_line(body: object, line: str) -> None:
    with pytest.raises(ConfigError, match=line):
        parse_service(body)
