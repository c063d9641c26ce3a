"""load_config: YAML file + CAPTURE_BRIDGE_* environment, validated; ConfigError on anything wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bridge.config import Config, load_config
from bridge.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GUID = "a64b2e58-9305-4a01-9c51-092205123945"
GUID2 = "0b7e1f52-1c1f-4c35-9a51-6a2a3c7b9d10"
TOKEN_ENV = {"CAPTURE_BRIDGE_CLOUD__TOKEN": "fixed-token-abc"}


def write(tmp_path: Path, text: str, name: str = "bridge.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ={} if environ is None else environ)


def config_error(tmp_path: Path, text: str | None, environ: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


MINIMAL = "cloud:\n  token: fixed-token-abc\n"


# --- defaults ---------------------------------------------------------------------------


def test_defaults_with_only_a_token(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.mqtt.username is None
    assert config.mqtt.password is None
    assert config.mqtt.client_id == "capture-bridge"
    assert config.mqtt.base_topic == "devices"
    assert config.mqtt.protocol == "auto"
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.tls is False
    assert config.cloud.base_url == "https://cloud.assetscontrols.com:3443/OpenApi"
    assert config.cloud.token is not None
    assert config.cloud.token.get_secret_value() == "fixed-token-abc"
    assert config.cloud.username is None
    assert config.cloud.password is None
    assert config.cloud.keepalive_timeout == 15.0
    assert config.devices == {}
    assert config.bridge.guid_topic_ids is True
    assert (config.bridge.max_count, config.bridge.max_duration, config.bridge.max_interval) == (100, 600, 3600)


def test_no_file_only_environment() -> None:
    config = load_config(None, environ=TOKEN_ENV)
    assert config.cloud.token is not None
    assert config.cloud.token.get_secret_value() == "fixed-token-abc"


def test_empty_file_needs_credentials(tmp_path: Path) -> None:
    message = config_error(tmp_path, "")
    assert message.startswith("cloud")


def test_empty_file_plus_environment(tmp_path: Path) -> None:
    assert load(tmp_path, "", TOKEN_ENV).cloud.token is not None


def test_mqtts_url_defaults_to_tls_port(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "mqtt:\n  url: mqtts://broker.example\n")
    assert config.mqtt.tls is True
    assert config.mqtt.port == 8883
    assert config.mqtt.host == "broker.example"


@pytest.mark.parametrize("value", ["/home/cams", "home/cams/", "/devices", "a//b"])
def test_base_topic_with_a_stray_slash_is_refused(tmp_path: Path, value: str) -> None:
    # Not silently changed: '/devices/x' and 'devices/x' are different topics, the user must know.
    assert config_error(tmp_path, MINIMAL + f"mqtt:\n  base_topic: {value}\n").startswith("mqtt.base_topic: must")


def test_base_topic_with_levels(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL + "mqtt:\n  base_topic: home/cams\n").mqtt.base_topic == "home/cams"


@pytest.mark.parametrize("key", ["mqtt:\n  password", "cloud:\n  token: null\n  username: u\n  password",
                                 "mqtt:\n  username", "mqtt:\n  client_id"])
def test_a_number_where_text_is_wanted_says_quote_it(tmp_path: Path, key: str) -> None:
    message = config_error(tmp_path, MINIMAL + f"{key}: 123456\n")
    assert "quote it" in message
    assert "123456" not in message  # it may be a password


@pytest.mark.parametrize("url", ["https://cloud.example.com/OpenApi?x=1", "https://cloud.example.com/OpenApi#top",
                                 "https://cloud.example.com/OpenApi?", "http://cloud.example.com:99999/OpenApi"])
def test_cloud_base_url_with_query_or_fragment_is_refused(tmp_path: Path, url: str) -> None:
    assert config_error(tmp_path, MINIMAL + f"cloud:\n  token: t\n  base_url: '{url}'\n").startswith(
        "cloud.base_url")


@pytest.mark.parametrize("url", ["mqtt://broker:1883/x", "mqtt://broker:1883?q=1", "mqtt://broker#f"])
def test_mqtt_url_with_a_path_is_refused(tmp_path: Path, url: str) -> None:
    assert config_error(tmp_path, MINIMAL + f"mqtt:\n  url: '{url}'\n").startswith("mqtt.url")


def test_yaml_error_names_line_and_reason(tmp_path: Path) -> None:
    message = config_error(tmp_path, "cloud:\n  token: t\n   bad: indent\n")
    assert "line 3" in message
    assert "mapping values are not allowed here" in message


def test_cloud_base_url_trailing_slash_is_trimmed(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL.replace("cloud:\n", "cloud:\n  base_url: http://120.25.245.20:8092/OpenApi/\n"))
    assert config.cloud.base_url == "http://120.25.245.20:8092/OpenApi"


# --- environment overrides ---------------------------------------------------------------


def test_env_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "CAPTURE_BRIDGE_MQTT__URL": "mqtts://broker.example:8884",
        "CAPTURE_BRIDGE_CLOUD__TOKEN": "from-env",
    }
    config = load(tmp_path, MINIMAL + "mqtt:\n  url: mqtt://file-host:1883\n", env)
    assert config.mqtt.url == "mqtts://broker.example:8884"
    assert config.mqtt.port == 8884
    assert config.cloud.token is not None
    assert config.cloud.token.get_secret_value() == "from-env"


def test_env_token_of_digits_stays_text(tmp_path: Path) -> None:
    config = load(tmp_path, "", {"CAPTURE_BRIDGE_CLOUD__TOKEN": "0012345"})
    assert config.cloud.token is not None
    assert config.cloud.token.get_secret_value() == "0012345"


def test_env_secrets_and_ids_stay_text(tmp_path: Path) -> None:
    env = {
        "CAPTURE_BRIDGE_CLOUD__USERNAME": "12345",
        "CAPTURE_BRIDGE_CLOUD__PASSWORD": "true",
        "CAPTURE_BRIDGE_MQTT__USERNAME": "0777",
        "CAPTURE_BRIDGE_MQTT__PASSWORD": "1.5",
        "CAPTURE_BRIDGE_MQTT__CLIENT_ID": "42",
    }
    config = load(tmp_path, "", env)
    assert config.cloud.username == "12345"
    assert config.cloud.password is not None
    assert config.cloud.password.get_secret_value() == "true"
    assert config.mqtt.username == "0777"
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "1.5"
    assert config.mqtt.client_id == "42"


def test_env_values_are_yaml_scalars(tmp_path: Path) -> None:
    env = {
        **TOKEN_ENV,
        "CAPTURE_BRIDGE_MQTT__KEEPALIVE": "30",
        "CAPTURE_BRIDGE_BRIDGE__PUBLISH_PENDING": "true",
        "CAPTURE_BRIDGE_CLOUD__RETRY_BACKOFF": "0.25",
        "CAPTURE_BRIDGE_MQTT__USERNAME": "null",
        "CAPTURE_BRIDGE_METRICS__PORT": "9108",
    }
    config = load(tmp_path, "mqtt:\n  username: someone\n", env)
    assert config.mqtt.keepalive == 30
    assert config.bridge.publish_pending is True
    assert config.cloud.retry_backoff == 0.25
    assert config.mqtt.username is None
    assert config.metrics.port == 9108


def test_env_null_token_with_file_credentials(tmp_path: Path) -> None:
    text = "cloud:\n  token: abc\n  username: u\n  password: p\n"
    config = load(tmp_path, text, {"CAPTURE_BRIDGE_CLOUD__TOKEN": "null"})
    assert config.cloud.token is None
    assert config.cloud.username == "u"


def test_env_null_token_without_credentials_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_CLOUD__TOKEN": "null"})
    assert message.startswith("cloud")
    assert "token" in message


def test_env_device_entry(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_DEVICES__VAN3": GUID2})
    assert config.devices["van3"].guid == GUID2


def test_other_environment_is_ignored(tmp_path: Path) -> None:
    env = {"PATH": "/bin", "CAPTURE_BRIDGE": "x", "CAPTURE_BRIDGEX__MQTT": "y", "OTHER_MQTT__URL": "z"}
    assert load(tmp_path, MINIMAL, env).mqtt.url == "mqtt://127.0.0.1:1883"


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("CAPTURE_BRIDGE_MQTT__BOGUS", "mqtt.bogus"),
        ("CAPTURE_BRIDGE_NOPE__KEY", "nope"),
        ("CAPTURE_BRIDGE_CLOUD__TOKENS", "cloud.tokens"),
    ],
)
def test_unknown_key_in_env(tmp_path: Path, name: str, named: str) -> None:
    message = config_error(tmp_path, MINIMAL, {name: "1"})
    assert message.startswith(named)
    assert "unknown key" in message


def test_empty_key_in_env(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_MQTT____URL": "x"})
    assert "CAPTURE_BRIDGE_MQTT____URL" in message


# --- validation errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus: 1\n", "bogus"),
        ("mqtt:\n  hostname: x\n", "mqtt.hostname"),
        ("cloud:\n  token: t\n  region: cn\n", "cloud.region"),
        ("bridge:\n  max_photos: 3\n", "bridge.max_photos"),
        ("logging:\n  colour: true\n", "logging.colour"),
        (f"devices:\n  truck:\n    guid: {GUID}\n    colour: red\n", "devices.truck.colour"),
    ],
)
def test_unknown_key_in_file(tmp_path: Path, text: str, named: str) -> None:
    if not text.startswith("cloud"):
        text = MINIMAL + text
    message = config_error(tmp_path, text)
    assert message.startswith(named), message
    assert "unknown key" in message


def test_removed_retry_device_timeout_is_one_line_naming_it(tmp_path: Path) -> None:
    # A device timeout (138) is never sent again; a config still asking for it must say so.
    message = config_error(tmp_path, "cloud:\n  token: t\n  retry_device_timeout: true\n")
    assert "\n" not in message
    assert "retry_device_timeout was removed" in message


@pytest.mark.parametrize("url", ["http://broker:1883", "ws://broker", "broker:1883", "mqtt://", "mqtt://host:99999"])
def test_bad_mqtt_url(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_MQTT__URL": url})
    assert message.startswith("mqtt.url")


@pytest.mark.parametrize("url", ["mqtt://h", "mqtts://h:8883", "tcp://h:1883", "ssl://h"])
def test_good_mqtt_url(tmp_path: Path, url: str) -> None:
    assert load(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_MQTT__URL": url}).mqtt.url == url


@pytest.mark.parametrize("url", ["ftp://cloud/OpenApi", "cloud.assetscontrols.com/OpenApi", "https://"])
def test_bad_cloud_url(tmp_path: Path, url: str) -> None:
    message = config_error(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_CLOUD__BASE_URL": url})
    assert message.startswith("cloud.base_url")


@pytest.mark.parametrize(
    "text",
    [
        "mqtt:\n  url: mqtt://h\n",
        "cloud:\n  username: u\n",
        "cloud:\n  password: p\n",
        "cloud:\n  token: null\n  username: u\n  password: null\n",
        "cloud: {}\n",
    ],
    ids=["no-cloud", "username-only", "password-only", "nulls", "empty-cloud"],
)
def test_missing_credentials(tmp_path: Path, text: str) -> None:
    assert config_error(tmp_path, text).startswith("cloud")


def test_username_and_password_are_enough(tmp_path: Path) -> None:
    config = load(tmp_path, "cloud:\n  username: demo\n  password: demo-password\n")
    assert config.cloud.token is None
    assert config.cloud.username == "demo"


def test_device_map_both_forms(tmp_path: Path) -> None:
    text = MINIMAL + (
        f"devices:\n  truck-12: {GUID}\n  van-3: {{guid: {GUID2}, name: Van 3}}\n  car:\n    guid: {GUID}\n"
    )
    config = load(tmp_path, text)
    assert config.devices["truck-12"].guid == GUID
    assert config.devices["truck-12"].name is None
    assert config.devices["van-3"].guid == GUID2
    assert config.devices["van-3"].name == "Van 3"
    assert config.devices["car"].guid == GUID


def test_devices_null_is_empty(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL + "devices:\n").devices == {}


@pytest.mark.parametrize(
    "entry",
    [
        "not-a-guid",
        "a64b2e58-9305-4a01-9c51-09220512394",  # one digit short
        "a64b2e58930549019c51092205123945",  # no dashes
        "g64b2e58-9305-4a01-9c51-092205123945",  # not hex
        "{guid: nope}",
        "{name: x}",
    ],
)
def test_bad_device_guid(tmp_path: Path, entry: str) -> None:
    message = config_error(tmp_path, MINIMAL + f"devices:\n  truck: {entry}\n")
    assert message.startswith("devices.truck"), message


@pytest.mark.parametrize("device_id", ["a/b", "a+b", "a#b", "+", "#"])
def test_device_id_must_be_one_topic_level(tmp_path: Path, device_id: str) -> None:
    message = config_error(tmp_path, MINIMAL + f'devices:\n  "{device_id}": {GUID}\n')
    assert message.startswith("devices")
    assert repr(device_id) in message


def test_device_id_must_be_text(tmp_path: Path) -> None:
    assert config_error(tmp_path, MINIMAL + f"devices:\n  12: {GUID}\n").startswith("devices")


def test_devices_must_be_a_mapping(tmp_path: Path) -> None:
    assert config_error(tmp_path, MINIMAL + f"devices:\n  - {GUID}\n").startswith("devices")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", "5"), ('"5"', "5"), ('"3.1.1"', "3.1.1"), ("3.1.1", "3.1.1"), ('"311"', "3.1.1"), ("auto", "auto"),
     ("AUTO", "auto")],
)
def test_protocol(tmp_path: Path, value: str, expected: str) -> None:
    assert load(tmp_path, MINIMAL + f"mqtt:\n  protocol: {value}\n").mqtt.protocol == expected


@pytest.mark.parametrize("value", ["6", '"3.1"', "mqtt", "null"])
def test_bad_protocol(tmp_path: Path, value: str) -> None:
    assert config_error(tmp_path, MINIMAL + f"mqtt:\n  protocol: {value}\n").startswith("mqtt.protocol")


def test_protocol_from_env(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_MQTT__PROTOCOL": "3.1.1"}).mqtt.protocol == "3.1.1"
    assert load(tmp_path, MINIMAL, {"CAPTURE_BRIDGE_MQTT__PROTOCOL": "5"}).mqtt.protocol == "5"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bridge:\n  max_count: 0\n", "bridge.max_count"),
        ("bridge:\n  max_in_flight: 0\n", "bridge.max_in_flight"),
        ("mqtt:\n  keepalive: 1\n", "mqtt.keepalive"),
        ("mqtt:\n  qos: 3\n", "mqtt.qos"),
        ("mqtt:\n  base_topic: a/+/b\n", "mqtt.base_topic"),
        ("logging:\n  level: LOUD\n", "logging.level"),
        ("cloud:\n  token: t\n  retry_attempts: 0\n", "cloud.retry_attempts"),
    ],
)
def test_out_of_range_values(tmp_path: Path, text: str, named: str) -> None:
    if not text.startswith("cloud"):
        text = MINIMAL + text
    assert config_error(tmp_path, text).startswith(named)


def test_several_errors_are_counted_on_one_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, MINIMAL + "mqtt:\n  a: 1\n  b: 2\n")
    assert "(and 1 more)" in message


# --- secrets -----------------------------------------------------------------------------


def test_masked_never_contains_secrets(tmp_path: Path) -> None:
    text = (
        "mqtt:\n  username: mqtt-user\n  password: mqtt-Pa55word\n"
        "cloud:\n  token: cloud-T0ken-xyz\n  username: cloud-user\n  password: cloud-Pa55word\n"
    )
    config = load(tmp_path, text)
    masked = config.masked()
    dumped = json.dumps(masked)
    for secret in ("mqtt-Pa55word", "cloud-T0ken-xyz", "cloud-Pa55word"):
        assert secret not in dumped
        assert secret not in str(config)
        assert secret not in repr(config)
    assert masked["mqtt"]["password"] == "**********"
    assert masked["cloud"]["token"] == "**********"
    assert masked["cloud"]["password"] == "**********"
    assert masked["cloud"]["username"] == "cloud-user"
    assert masked["mqtt"]["username"] == "mqtt-user"
    # the real values are still there for the code that needs them
    assert config.cloud.token is not None
    assert config.cloud.token.get_secret_value() == "cloud-T0ken-xyz"


def test_masked_leaves_unset_secrets_null(tmp_path: Path) -> None:
    masked = load(tmp_path, MINIMAL).masked()
    assert masked["mqtt"]["password"] is None
    assert masked["cloud"]["password"] is None


# --- the file itself -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "top level must be a mapping" in config_error(tmp_path, text)


def test_invalid_yaml(tmp_path: Path) -> None:
    message = config_error(tmp_path, "mqtt:\n  url: [unclosed\ncloud: {\n")
    assert "not valid YAML" in message
    assert "line" in message


def test_invalid_yaml_does_not_echo_secrets(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'cloud:\n  password: "hunter2-secret\n  token: [\n')
    assert "hunter2-secret" not in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path, environ={})


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, environ={})


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match="cannot read config file"):
            load_config(path, environ={})
    finally:
        path.chmod(0o600)


def test_not_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"cloud:\n  token: caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path, environ={})


@pytest.mark.parametrize("name", ["bridge.example.yaml", "demo.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "config" / name, environ={})
    assert config.devices["truck-12"].guid == GUID
    assert config.cloud.username is not None


def test_example_config_sets_every_documented_key() -> None:
    config = load_config(ROOT / "config" / "bridge.example.yaml", environ={})
    assert config.mqtt.base_topic == "devices"
    assert config.mqtt.protocol == "auto"
    assert config.cloud.base_url == "https://cloud.assetscontrols.com:3443/OpenApi"


# --- credentials in URLs, Response Topic filters ---------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "url"),
    [("cloud", "base_url", "https://user:pa55word@cloud.example/OpenApi"),
     ("mqtt", "url", "mqtt://user:pa55word@broker:1883")],
)
def test_urls_with_credentials_are_refused_without_echoing_them(section: str, key: str, url: str) -> None:
    env = {f"CAPTURE_BRIDGE_{section.upper()}__{key.upper()}": url, "CAPTURE_BRIDGE_CLOUD__TOKEN": "t0k3n"}
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    message = str(info.value)
    assert message.startswith(f"{section}.{key}:")
    assert "credentials" in message
    assert "pa55word" not in message


@pytest.mark.parametrize("bad", ["a/#/b", "a+/b", "", "a/##"])
def test_response_topics_must_be_filters(bad: str) -> None:
    with pytest.raises(ValueError, match="response_topics"):
        Config.model_validate({"cloud": {"token": "t0k3n"}, "mqtt": {"response_topics": [bad]}})


@pytest.mark.parametrize(
    ("device", "why"),
    [("bridge", "own topic level"), ("$capture-bridge-probe-x", "reserved"),
     ("bridge_capture-bridge", "Home Assistant device")],
)
def test_device_ids_that_collide_with_the_bridges_own_are_refused(tmp_path: Path, device: str, why: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, MINIMAL + f'devices:\n  "{device}": a64b2e58-9305-4a01-9c51-092205123945\n')
    message = str(raised.value)
    assert message.startswith(f"devices.{device}: ")
    assert why in message
    assert "\n" not in message


def test_the_bridge_device_id_of_a_client_id_with_unsafe_characters_is_refused_too(tmp_path: Path) -> None:
    text = (MINIMAL + 'mqtt:\n  client_id: "a b"\n'
            'devices:\n  "bridge_a_b_c8687a08": a64b2e58-9305-4a01-9c51-092205123945\n')
    with pytest.raises(ConfigError, match=r"^devices\.bridge_a_b_c8687a08: .*Home Assistant device"):
        load(tmp_path, text)
