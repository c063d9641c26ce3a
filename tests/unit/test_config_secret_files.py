"""`*_file` secrets (Docker / Kubernetes secrets): read at load, masked, one clear line when wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main
from bridge.config import load_config
from bridge.core.errors import ConfigError

SECRET = "s3cret-Pa55-from-file"
# (key in the YAML, the field the secret lands in); the other credentials make the config valid.
CASES = [
    ("cloud", "password", "cloud:\n  username: u\n  password_file: {path}\n"),
    ("cloud", "token", "cloud:\n  token_file: {path}\n"),
    ("mqtt", "password", "mqtt:\n  username: u\n  password_file: {path}\ncloud:\n  token: t0ken\n"),
]


def secret_file(tmp_path: Path, content: str = SECRET + "\n") -> Path:
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    return path


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def secret_of(section: str, field: str, config_path: Path) -> str:
    config = load_config(config_path, environ={})
    value = getattr(getattr(config, section), field)
    assert value is not None
    return str(value.get_secret_value())


@pytest.mark.parametrize(("section", "field", "yaml_text"), CASES)
def test_secret_is_read_from_the_file_and_masked(tmp_path: Path, section: str, field: str, yaml_text: str) -> None:
    path = secret_file(tmp_path)
    config_path = config_file(tmp_path, yaml_text.format(path=path))
    assert secret_of(section, field, config_path) == SECRET
    masked = load_config(config_path, environ={}).masked()
    assert masked[section][field] == "**********"
    assert masked[section][f"{field}_file"] == str(path)  # the path is not the secret: it helps debugging
    assert SECRET not in json.dumps(masked)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(SECRET, SECRET), (SECRET + "\n", SECRET), (SECRET + "\r\n", SECRET), (SECRET + "\n\n", SECRET + "\n"),
     (" " + SECRET + " \n", " " + SECRET + " ")],
)
def test_exactly_one_trailing_newline_is_dropped(tmp_path: Path, content: str, expected: str) -> None:
    config_path = config_file(tmp_path, f"cloud:\n  token_file: {secret_file(tmp_path, content)}\n")
    assert secret_of("cloud", "token", config_path) == expected


def test_file_key_from_the_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    env = {"CAPTURE_BRIDGE_CLOUD__USERNAME": "demo", "CAPTURE_BRIDGE_CLOUD__PASSWORD_FILE": str(path)}
    config = load_config(None, environ=env)
    assert config.cloud.password is not None
    assert config.cloud.password.get_secret_value() == SECRET


@pytest.mark.parametrize(("section", "field", "yaml_text"), CASES)
def test_missing_file_is_one_line_naming_the_key(tmp_path: Path, section: str, field: str, yaml_text: str) -> None:
    missing = tmp_path / "no-such-secret"
    with pytest.raises(ConfigError) as info:
        load_config(config_file(tmp_path, yaml_text.format(path=missing)), environ={})
    message = str(info.value)
    assert message.startswith(f"{section}.{field}_file: cannot read {missing}")
    assert "No such file" in message
    assert "\n" not in message


def test_unreadable_and_empty_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cloud\.token_file: cannot read .*directory"):
        load_config(config_file(tmp_path, f"cloud:\n  token_file: {tmp_path}\n"), environ={})
    empty = secret_file(tmp_path, "\n")
    with pytest.raises(ConfigError, match=r"^cloud\.token_file: .* is empty$"):
        load_config(config_file(tmp_path, f"cloud:\n  token_file: {empty}\n"), environ={})


@pytest.mark.parametrize(("section", "field", "yaml_text"), CASES)
def test_plain_key_and_file_key_together_are_refused(
    tmp_path: Path, section: str, field: str, yaml_text: str
) -> None:
    text = yaml_text.format(path=secret_file(tmp_path)).replace(
        f"{field}_file:", f"{field}: plain-value\n  {field}_file:"
    )
    with pytest.raises(ConfigError) as info:
        load_config(config_file(tmp_path, text), environ={})
    assert f"{section}.{field} or {section}.{field}_file, not both" in str(info.value)
    assert "plain-value" not in str(info.value)


def test_check_config_never_prints_the_file_content(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    config_path = config_file(tmp_path, f"cloud:\n  username: u\n  password_file: {path}\n  token_file: {path}\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config_path)])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    printed = json.loads(result.output)
    assert printed["cloud"]["password"] == "**********"
    assert printed["cloud"]["token"] == "**********"


def test_run_with_a_missing_secret_file_says_which_key(tmp_path: Path) -> None:
    config_path = config_file(tmp_path, f"cloud:\n  username: u\n  password_file: {tmp_path / 'gone'}\n")
    result = CliRunner().invoke(main, ["run", "--config", str(config_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("capture-bridge: config error: cloud.password_file: cannot read")
