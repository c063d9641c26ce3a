"""A secret read from a file reaches a real server, and nothing printed shows it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from bridge.cli import main
from bridge.sim.behaviours import DEMO_DEVICES, DEMO_PASSWORD, DEMO_USER
from bridge.sim.server import MockCloud


def test_password_from_a_file_logs_in_to_a_real_server(tmp_path: Path) -> None:
    # The mock cloud accepts only the demo password: an ok state proves the file's content was
    # sent (as its MD5) without its trailing newline, and nothing printed shows it.
    guid = next(g for g, behaviour in DEMO_DEVICES.items() if behaviour == "ok")
    with MockCloud() as cloud:
        path = tmp_path / "cloud_password"
        path.write_text(DEMO_PASSWORD + "\n", encoding="utf-8")
        config_path = tmp_path / "bridge.yaml"
        config_path.write_text(
            f"cloud:\n  base_url: {cloud.url}\n  username: {DEMO_USER}\n  password_file: {path}\n"
            f"  retry_attempts: 1\ndevices:\n  truck: {guid}\n",
            encoding="utf-8",
        )
        result = CliRunner().invoke(main, ["capture", "truck", "--config", str(config_path)])
        assert cloud.login_count == 1
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "ok"
    assert DEMO_PASSWORD not in result.output
