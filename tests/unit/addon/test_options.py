"""The add-on's options -> the bridge's config: every option lands on its key, and errors name the option."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bridge.addon.options import OPTION_KEYS, config_data, devices_file_path, in_option_terms, read_options
from bridge.addon.supervisor import Broker
from bridge.config.loader import validate_config
from bridge.core.errors import ConfigError

GUID = "a64b2e58-9305-4a01-9c51-092205123945"
OTHER = "de000000-0000-4000-8000-000000000001"
BROKER = Broker("core-mosquitto", 1883, False, "addons", "broker-secret")


def options(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cloud_url": "https://cloud.assetscontrols.com:3443/OpenApi", "username": "fleet",
                            "password": "pw-1234", "devices": [{"id": "truck-12", "guid": GUID, "name": "Truck 12"}],
                            "base_topic": "devices", "guid_topic_ids": True, "log_level": "info"}
    base.update(extra)
    return base


def build(opts: dict[str, Any], tmp_path: Path, broker: Broker = BROKER) -> dict[str, Any]:
    return config_data(opts, broker, tmp_path / "data", tmp_path / "config")


def test_every_option_lands_on_its_config_key(tmp_path: Path) -> None:
    config = validate_config(build(options(base_topic="fleet", guid_topic_ids=False, log_level="debug"), tmp_path))
    assert config.cloud.base_url == "https://cloud.assetscontrols.com:3443/OpenApi"
    assert config.cloud.username == "fleet"
    assert config.cloud.password is not None
    assert config.cloud.password.get_secret_value() == "pw-1234"
    assert config.devices["truck-12"].guid == GUID
    assert config.devices["truck-12"].name == "Truck 12"
    assert config.mqtt.base_topic == "fleet"
    assert config.bridge.guid_topic_ids is False
    assert config.logging.level == "DEBUG"
    assert set(OPTION_KEYS) >= {"cloud_url", "username", "password", "devices", "devices_file", "base_topic",
                                "guid_topic_ids", "log_level"}


def test_broker_and_memory_come_from_the_supervisor_and_data(tmp_path: Path) -> None:
    config = validate_config(build(options(), tmp_path))
    assert config.mqtt.url == "mqtt://core-mosquitto:1883"
    assert config.mqtt.username == "addons"
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "broker-secret"
    assert config.mqtt.protocol == "auto"  # the Supervisor only ever says 3.1.1; MQTT 5 is tried first
    assert config.journal_file() == tmp_path / "data" / "journal.sqlite"
    assert "broker-secret" not in str(config.masked())
    assert "pw-1234" not in str(config.masked())


def test_ssl_means_mqtts(tmp_path: Path) -> None:
    config = validate_config(build(options(), tmp_path, Broker("core-mosquitto", 8883, True, None, None)))
    assert config.mqtt.url == "mqtts://core-mosquitto:8883"
    assert config.mqtt.tls
    assert config.mqtt.username is None


def test_devices_file_adds_devices_from_the_addon_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    lines = [f"cam-{n}: {OTHER[:-4]}{n:04d}" for n in range(3000)]
    (folder / "devices.yaml").write_text("\n".join([*lines, f"van-1: {{guid: {OTHER}, name: Van}}"]))
    config = validate_config(build(options(devices_file="devices.yaml"), tmp_path))
    assert len(config.devices) == 3002
    assert config.devices["van-1"].name == "Van"
    assert config.devices["truck-12"].guid == GUID
    # The absolute path as the add-on sees it works too, and a `devices:` section copied from a config file.
    (folder / "section.yaml").write_text(f"devices:\n  van-2: {OTHER}\n")
    assert "van-2" in build(options(devices_file=str(folder / "section.yaml")), tmp_path)["devices"]


@pytest.mark.parametrize(("value", "expected"), [
    ("devices.yaml", "devices.yaml"), ("/config/sub/d.yaml", "sub/d.yaml"), ("./d.yaml", "d.yaml")])
def test_devices_file_resolves_inside_the_config_folder(value: str, expected: str) -> None:
    assert devices_file_path(value, Path("/config")) == Path("/config") / expected


@pytest.mark.parametrize("value", ["../../data/options.json", "/config/../etc/passwd", "/", "/configuration/d.yaml",
                                   "/data/options.json", "."])
def test_devices_file_never_leaves_the_config_folder(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^devices_file: .* in the add-on's config folder"):
        devices_file_path(value, Path("/config"))


@pytest.mark.parametrize(("opts", "line"), [
    ({"username": ""}, r"^username: fill it in on the add-on's Configuration tab$"),
    ({"password": None}, r"^password: fill it in"),
    ({"cloud_url": None}, r"^cloud_url: fill it in"),
    ({"devices": [{"id": "a", "guid": GUID}, {"id": "a", "guid": OTHER}]},
     r"^devices, entry 2: id 'a' is listed twice"),
    ({"devices": [{"id": "a", "guid": ""}]}, r"^devices, entry 1 \(a\): guid is empty$"),
    ({"devices": [{"guid": GUID}]}, r"^devices, entry 1: id is empty$"),
    ({"devices": "truck-12"}, r"^devices: must be a list"),
    ({"guid_topic_ids": "yes"}, r"^guid_topic_ids: must be true or false$"),
    ({"devices_file": "missing.yaml"}, r"^devices_file: cannot read .*missing\.yaml: No such file"),
])
def test_a_bad_option_is_one_line_naming_it(opts: dict[str, Any], line: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=line):
        build(options(**opts), tmp_path)


@pytest.mark.parametrize(("opts", "line"), [
    ({"cloud_url": "ftp://cloud.example"}, r"^cloud_url: must be an http:// or https:// URL$"),
    ({"base_topic": "/devices"}, r"^base_topic: must not start or end with '/'"),
    ({"devices": [{"id": "truck-12", "guid": "not-a-guid"}]}, r"^devices \(truck-12\.guid\): is not a GUID"),
    ({"log_level": "loud"}, r"^log_level: "),
])
def test_a_value_the_config_refuses_names_the_option(opts: dict[str, Any], line: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(build(options(**opts), tmp_path))
    assert re.match(line, in_option_terms(str(caught.value)))


def test_bad_devices_file_content_is_named(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "d.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"^devices_file: .*d\.yaml must be a mapping of topic id -> GUID"):
        build(options(devices_file="d.yaml"), tmp_path)
    (tmp_path / "config" / "d.yaml").write_text("truck-12: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^devices_file: .*d\.yaml line \d+ is not valid YAML$"):
        build(options(devices_file="d.yaml"), tmp_path)
    (tmp_path / "config" / "d.yaml").write_text(f"truck-12: {OTHER}\n")
    with pytest.raises(ConfigError, match=r"^devices: 'truck-12' is both in the list and in devices_file"):
        build(options(devices_file="d.yaml"), tmp_path)


def test_read_options_says_what_is_wrong_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "options.json"
    with pytest.raises(ConfigError, match=r"^cannot read the add-on options .*options\.json: No such file"):
        read_options(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"are not JSON$"):
        read_options(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match=r"are not a JSON object$"):
        read_options(path)
    path.write_text('{"username": "u"}')
    assert read_options(path) == {"username": "u"}
