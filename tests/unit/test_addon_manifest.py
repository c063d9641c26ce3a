"""The Home Assistant add-on's files at the repository root, checked as the Supervisor reads them.

config.yaml against a JSON schema of the documented add-on keys (unknown keys are errors: the
Supervisor drops them silently), its option defaults against its own `schema:`, the translations
against the options (both ways), and what the store shows (icon, logo, docs). `make addon-check`
builds and runs the image.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge import __version__
from bridge.addon.options import OPTION_KEYS
from tests.support.addon_schema import SchemaError, check_schema, validate_options

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).resolve().parents[1] / "support" / "ha_addon_config.schema.json"
GUID = "a64b2e58-9305-4a01-9c51-092205123945"


def manifest() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def translations() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "translations" / "en.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def filled_in() -> dict[str, Any]:
    """The defaults plus what the add-on's page asks a new user to fill in."""
    return {**manifest()["options"], "username": "fleet", "password": "secret",
            "devices": [{"id": "truck-12", "guid": GUID, "name": "Truck 12"}]}


def test_config_yaml_has_only_documented_keys_with_valid_values() -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(manifest())


@pytest.mark.parametrize(("key", "value"), [("service", ["mqtt:need"]), ("arch", ["x86"]),
                                             ("version", 0.1), ("services", ["mqtt:must"]),
                                             ("watchdog", "http://localhost:9108")])
def test_the_manifest_schema_catches_mistakes(key: str, value: object) -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**manifest(), key: value})


def test_what_the_issue_asks_of_the_manifest() -> None:
    data = manifest()
    assert data["services"] == ["mqtt:need"]
    assert {"aarch64", "amd64"} <= set(data["arch"])
    assert data["version"] == __version__
    assert {"type": "addon_config", "read_only": True} in data["map"]
    assert data["schema"]["password"] == "password"
    assert isinstance(data["schema"]["devices"], list)
    assert set(data["schema"]["devices"][0]) == {"id", "guid", "name"}
    assert not data["init"]  # tini is PID 1 in the image


def test_option_schema_uses_only_types_the_supervisor_knows() -> None:
    check_schema(manifest()["schema"])
    assert set(manifest()["schema"]) == set(OPTION_KEYS)


def test_defaults_need_only_what_a_new_user_fills_in() -> None:
    data = manifest()
    validate_options(data["schema"], filled_in())
    with pytest.raises(SchemaError, match=r"options\.(username|password): missing"):
        validate_options(data["schema"], data["options"])
    for optional, typ in data["schema"].items():
        if isinstance(typ, str) and typ.endswith("?"):
            assert optional not in data["options"], f"a default makes {optional} required in the Supervisor"


@pytest.mark.parametrize(("change", "line"), [
    ({"devices": [{"id": "truck/12", "guid": GUID}]}, r"devices\[0\]\.id: 'truck/12' does not match"),
    ({"devices": [{"id": "t", "guid": "a64b2e58"}]}, r"devices\[0\]\.guid: 'a64b2e58' does not match"),
    ({"log_level": "verbose"}, r"log_level: 'verbose' is not one of"),
    ({"cloud_url": "cloud.example"}, r"cloud_url: 'cloud.example' is not a URL"),
    ({"mqtt_url": "mqtt://x"}, r"mqtt_url: not in the schema"),
    ({"guid_topic_ids": "yes"}, r"guid_topic_ids: must be true or false"),
])
def test_the_schema_refuses_what_the_ui_should_refuse(change: dict[str, Any], line: str) -> None:
    with pytest.raises(SchemaError, match=line):
        validate_options(manifest()["schema"], {**filled_in(), **change})


def test_translations_name_every_option_and_nothing_else() -> None:
    schema = manifest()["schema"]
    configuration = translations()["configuration"]
    assert set(configuration) == set(schema)
    for key, entry in configuration.items():
        assert entry["name"], key
        assert entry["description"], key
        nested = schema[key][0] if isinstance(schema[key], list) else schema[key]
        if isinstance(nested, dict):
            assert set(entry["fields"]) == set(nested), key
            assert all(field["name"] for field in entry["fields"].values())
        else:
            assert "fields" not in entry, key
    assert set(translations().get("network", {})) == set(manifest()["ports"])


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_store_images() -> None:
    assert png_size(ROOT / "icon.png") == (128, 128)
    width, height = png_size(ROOT / "logo.png")
    assert width > height > 0


def test_repository_yaml_names_the_repository() -> None:
    data = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))
    assert set(data) <= {"name", "url", "maintainer"}
    assert data["name"]


def test_the_supervisor_finds_exactly_one_addon() -> None:
    """Its store reads every config.(json|yaml|yml) of the clone outside dot folders and `rootfs`."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the committed files cannot be listed")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    manifests = [f for f in files if re.search(r"(^|/)config\.(json|ya?ml)$", f)
                 and not any(part.startswith(".") or part == "rootfs" for part in f.split("/"))]
    assert manifests == ["config.yaml"]


def test_dockerfile_labels_and_base_match_the_plain_image() -> None:
    addon = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    plain = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    base = re.compile(r"^ARG PYTHON_IMAGE=(\S+)$", re.MULTILINE)
    assert base.findall(addon) == base.findall(plain)
    for label in ("io.hass.type=\"addon\"", "io.hass.arch=\"${BUILD_ARCH}\"", "io.hass.version=\"${BUILD_VERSION}\""):
        assert label in addon
    assert "python\", \"-m\", \"bridge.addon\"" in addon
    assert not re.search(r"^USER ", addon, re.MULTILINE)  # /data is root-owned under the Supervisor
    assert not (ROOT / "build.yaml").exists()  # deprecated; without it no Alpine BUILD_FROM is passed


def test_docs_cover_every_option() -> None:
    docs = (ROOT / "DOCS.md").read_text(encoding="utf-8")
    for option in manifest()["schema"]:
        assert f"`{option}`" in docs, option
