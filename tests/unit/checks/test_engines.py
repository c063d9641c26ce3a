"""Which engine and compose `make image-check` picks, with stand-in `docker`/`podman` programs on PATH.

The programs are tiny shell scripts that answer like the real CLIs do (a version, or an error and
a non-zero exit), so the detection runs for real: what users have (Docker with Compose v2, Docker
with only Debian 12's Compose 1.29, Podman with podman-compose, a Docker CLI whose daemon is
down) and what the check says about what is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from checks.engines import compose_version, find_engine

DOCKER_UP = """#!/bin/sh
case "$1 $2" in
  "version --format") echo 20.10.24 ;;
  "compose version") {compose_v2} ;;
  *) exit 1 ;;
esac
"""
DOCKER_DOWN = """#!/bin/sh
echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock" >&2
exit 1
"""
NO_PLUGIN = "echo \"docker: unknown command: docker compose\" >&2; exit 1"
PODMAN = """#!/bin/sh
case "$1" in
  info) echo host ;;
  version) echo 4.3.1 ;;
  *) echo "Error: unrecognized command \\`podman $1\\`" >&2; exit 125 ;;
esac
"""


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PATH of our own: only the programs a test writes are there."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return folder


def program(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)


def test_docker_with_compose_v2_uses_the_plugin(bin_dir: Path) -> None:
    program(bin_dir, "docker", DOCKER_UP.format(compose_v2="echo 2.26.1"))
    program(bin_dir, "docker-compose", "#!/bin/sh\necho 1.29.2\n")
    engine = find_engine()
    assert (engine.name, engine.compose_cmd) == ("docker", ["docker", "compose"])
    assert engine.version == "Docker 20.10.24 + Compose 2.26.1"


def test_docker_with_only_debians_compose_1_29_uses_docker_compose(bin_dir: Path) -> None:
    program(bin_dir, "docker", DOCKER_UP.format(compose_v2=NO_PLUGIN))
    program(bin_dir, "docker-compose", "#!/bin/sh\necho 1.29.2\n")
    engine = find_engine()
    assert (engine.name, engine.compose_cmd) == ("docker", ["docker-compose"])
    assert engine.version == "Docker 20.10.24 + Compose 1.29.2"


def test_a_docker_without_a_daemon_falls_back_to_podman_and_says_why(
    bin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program(bin_dir, "docker", DOCKER_DOWN)
    program(bin_dir, "podman", PODMAN)
    program(bin_dir, "podman-compose", "#!/bin/sh\necho 'podman-compose version 1.6.0'\n")
    engine = find_engine()
    assert (engine.name, engine.compose_cmd) == ("podman", [str(bin_dir / "podman-compose")])
    assert engine.version == "Podman 4.3.1 + podman-compose (podman-compose version 1.6.0)"
    assert "not used: docker: no Docker Engine answers at unix:///var/run/docker.sock" in capsys.readouterr().out


def test_docker_without_any_compose_falls_back_to_podman(bin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program(bin_dir, "docker", DOCKER_UP.format(compose_v2=NO_PLUGIN))
    program(bin_dir, "podman", PODMAN)
    program(bin_dir, "podman-compose", "#!/bin/sh\necho 'podman-compose version 1.6.0'\n")
    assert find_engine().name == "podman"
    out = capsys.readouterr().out
    assert "Docker answers but has no compose" in out
    assert "docker-compose" in out


def test_nothing_usable_names_each_engine_and_what_it_lacks(bin_dir: Path) -> None:
    program(bin_dir, "docker", DOCKER_UP.format(compose_v2=NO_PLUGIN))
    program(bin_dir, "docker-compose", "#!/bin/sh\necho 1.25.0\n")
    with pytest.raises(SystemExit) as exited:
        find_engine()
    message = str(exited.value)
    assert "`docker-compose` is Compose 1.25.0: the compose files need 1.27 or later" in message
    assert "Docker answers but has no compose" in message
    assert "podman: not installed" in message


def test_a_forced_compose_is_used_as_given(bin_dir: Path) -> None:
    program(bin_dir, "docker", DOCKER_UP.format(compose_v2="echo 2.26.1"))
    program(bin_dir, "docker-compose", "#!/bin/sh\necho 'docker-compose version 1.29.2, build unknown'\n")
    engine = find_engine("docker", "docker-compose")
    assert engine.compose_cmd == ["docker-compose"]
    assert engine.version == "Docker 20.10.24 + docker-compose (docker-compose version 1.29.2, build unknown)"


@pytest.mark.parametrize(("text", "expected"), [
    ("2.26.1-4", (2, 26, 1)),
    ("v2.29.7", (2, 29, 7)),
    ("1.29.2, build unknown", (1, 29, 2)),
    ("podman-compose version 1.6.0", (1, 6, 0)),
    ("1.27", (1, 27)),
    ("unknown", ()),
])
def test_compose_versions_are_read_from_what_each_compose_prints(text: str, expected: tuple[int, ...]) -> None:
    assert compose_version(text) == expected
