"""The container files say what the bridge needs: read and checked here, run for real by `make image-check`.

Each test guards a defect the compose stack or the image once had (commands lost while the
bridge was stopped, a capture fired twice on stop, the broker open to the network, ...).
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bridge.config import BridgeConfig, CloudConfig, load_config
from tests.support.compose import compose_default, grace_seconds, load_yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BRIDGE_ENV = "CAPTURE_BRIDGE_MQTT__URL"  # every bridge service sets it; the broker and mock cloud do not
DIGEST = re.compile(r"^[\w./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$")
KUBERNETES_VERSION = "1.30.0"


def compose() -> dict[str, Any]:
    return load_yaml(DOCKER / "compose.yml")


def scale_out() -> dict[str, Any]:
    return load_yaml(DOCKER / "compose.scale-out.yml")


def bridges(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in data["services"].items() if BRIDGE_ENV in (svc.get("environment") or {})}


def env_seconds(env: dict[str, Any], name: str, fallback: float) -> float:
    return float(env[name]) if name in env else fallback


def shutdown_budget(env: dict[str, Any]) -> float:
    """bridge.shutdown_timeout + cloud.read_timeout as this service configures them."""
    shutdown = env_seconds(env, "CAPTURE_BRIDGE_BRIDGE__SHUTDOWN_TIMEOUT", BridgeConfig().shutdown_timeout)
    read = env_seconds(env, "CAPTURE_BRIDGE_CLOUD__READ_TIMEOUT", CloudConfig.model_fields["read_timeout"].default)
    return shutdown + read


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def dockerfile_arg(name: str) -> str:
    for word, rest in dockerfile_instructions():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}=... in the Dockerfile")


# --- compose: the default stack -----------------------------------------------------------------


def test_default_bridge_is_not_in_a_shared_group() -> None:
    # A shared-subscription member that stops cleanly unsubscribes; with no member left the broker
    # drops QoS 1 commands instead of queueing them in the bridge's session.
    members = bridges(compose())
    assert members, "compose.yml has no bridge service"
    for name, svc in members.items():
        assert "CAPTURE_BRIDGE_MQTT__SHARED_GROUP" not in svc["environment"], name
        assert "profiles" not in svc, name


def test_the_project_name_is_set_in_a_way_every_compose_reads() -> None:
    """Compose 1.x (Debian 12's docker-compose 1.29) refuses a top-level `name:`; COMPOSE_PROJECT_NAME
    in the .env beside the compose files names the project for Compose v2, 1.x and podman-compose."""
    assert "name" not in compose()
    assert "name" not in scale_out()
    lines = (DOCKER / ".env").read_text(encoding="utf-8").splitlines()
    settings = dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    assert settings == {"COMPOSE_PROJECT_NAME": "capture-bridge"}


def test_grace_period_outlasts_shutdown_timeout_plus_a_cloud_call() -> None:
    for data in (compose(), scale_out()):
        for name, svc in bridges(data).items():
            if "stop_grace_period" not in svc:
                continue  # an override entry: the base service in compose.yml has it
            assert grace_seconds(svc["stop_grace_period"]) > shutdown_budget(svc["environment"]), name
    assert grace_seconds(compose()["services"]["bridge"]["stop_grace_period"]) >= 45


def test_published_ports_are_bound_to_loopback() -> None:
    for data in (compose(), scale_out()):
        for name, svc in data["services"].items():
            for port in svc.get("ports") or []:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_broker_data_and_journal_are_named_volumes() -> None:
    data = compose()
    named = set(data["volumes"])

    def mounts(service: str) -> dict[str, str]:
        entries = [str(v).split(":") for v in data["services"][service]["volumes"]]
        return {parts[1]: parts[0] for parts in entries}

    assert mounts("mosquitto")["/mosquitto/data"] in named
    assert mounts("bridge")["/data"] in named
    conf = (DOCKER / "mosquitto.conf").read_text(encoding="utf-8")
    assert re.search(r"^persistence true$", conf, re.MULTILINE)
    assert re.search(r"^persistence_location /mosquitto/data/?$", conf, re.MULTILINE)


def test_image_is_built_once_and_shared() -> None:
    services = compose()["services"]
    built = [name for name, svc in services.items() if "build" in svc]
    assert built == ["bridge"]
    image = services["bridge"]["image"]
    assert services["mock-cloud"]["image"] == image
    assert all(svc.get("image") == image for svc in bridges(scale_out()).values() if "image" in svc)
    assert not [name for name, svc in scale_out()["services"].items() if "build" in svc]


def test_containers_run_read_only() -> None:
    for data in (compose(), scale_out()):
        for name, svc in data["services"].items():
            if svc.get("image", "").endswith("capture-bridge:local}"):
                assert svc.get("read_only") is True, name


def test_cloud_password_comes_from_a_secret_file() -> None:
    data = compose()
    bridge = data["services"]["bridge"]
    env = bridge["environment"]
    assert not [key for key in env if key.endswith(("__PASSWORD", "__TOKEN"))]
    path = env["CAPTURE_BRIDGE_CLOUD__PASSWORD_FILE"]
    name = path.removeprefix("/run/secrets/")
    assert name in bridge["secrets"]
    assert (DOCKER / data["secrets"][name]["file"]).is_file()


def test_base_images_are_pinned_by_digest() -> None:
    services = compose()["services"]
    assert DIGEST.match(compose_default(services["mosquitto"]["image"]))
    pinned = dockerfile_arg("PYTHON_IMAGE")
    assert DIGEST.match(pinned)
    # compose passes the same default, so `docker compose build` and `docker build` agree.
    assert compose_default(services["bridge"]["build"]["args"]["PYTHON_IMAGE"]) == pinned


# --- compose: scale-out ---------------------------------------------------------------------------


def test_scale_out_sets_the_group_on_every_member_with_its_own_id_and_journal() -> None:
    base_env = compose()["services"]["bridge"]["environment"]
    members = bridges(scale_out())
    members["bridge"] = {**compose()["services"]["bridge"], **scale_out()["services"]["bridge"],
                         "environment": {**base_env, **scale_out()["services"]["bridge"]["environment"]}}
    assert len(members) >= 2
    groups = {svc["environment"].get("CAPTURE_BRIDGE_MQTT__SHARED_GROUP") for svc in members.values()}
    assert groups == {"capture"}
    ids = [svc["environment"]["CAPTURE_BRIDGE_MQTT__CLIENT_ID"] for svc in members.values()]
    assert len(set(ids)) == len(ids)
    journals = [next(v for v in svc["volumes"] if str(v).endswith(":/data")) for svc in members.values()]
    assert len(set(journals)) == len(journals)
    # The extra members repeat the base bridge's settings; only the group and the id differ.
    own = {"CAPTURE_BRIDGE_MQTT__SHARED_GROUP", "CAPTURE_BRIDGE_MQTT__CLIENT_ID"}
    for name, svc in members.items():
        assert {k: v for k, v in svc["environment"].items() if k not in own} == {
            k: v for k, v in base_env.items() if k not in own
        }, name
        assert svc["stop_grace_period"] == compose()["services"]["bridge"]["stop_grace_period"], name


# --- the Dockerfile and its build context --------------------------------------------------------


def test_runtime_stage_runs_as_numeric_user_under_tini_with_a_healthcheck() -> None:
    runtime = stages()[-1]
    words = dict(runtime)  # the last of each instruction counts
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", words["USER"]), words["USER"]
    assert "/healthz" in words["HEALTHCHECK"]
    assert words["ENTRYPOINT"].startswith('["tini", "--"')
    env = words["ENV"]
    assert "CAPTURE_BRIDGE_METRICS__PORT=9108" in env
    assert "CAPTURE_BRIDGE_METRICS__HOST=0.0.0.0" in env  # served for the healthcheck and probes
    run = " ".join(rest for word, rest in runtime if word == "RUN")
    assert "--no-create-home" in run
    assert "--shell /usr/sbin/nologin" in run
    assert "tini" in run


def test_build_uses_the_lock_with_hashes_and_installs_offline() -> None:
    build = " ".join(rest for word, rest in stages()[0] if word in ("RUN", "COPY"))
    assert "requirements.lock" in build
    assert "--require-hashes" in build
    assert "--no-index" in build
    install = [rest for word, rest in stages()[0] if word == "RUN" and " install " in rest]
    assert install
    assert all("--no-index" in rest for rest in install)


def test_only_the_venv_leaves_the_build_stage() -> None:
    copies = [rest for word, rest in stages()[-1] if word == "COPY" and "--from=" in rest]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_froms_use_the_pinned_argument() -> None:
    froms = [rest for word, rest in dockerfile_instructions() if word == "FROM"]
    assert froms
    assert all(rest.startswith("${PYTHON_IMAGE}") for rest in froms)


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    # Only the forms .dockerignore uses here (`*`, `!name`, `!dir/`, `**/name`), last match wins,
    # as Docker applies them; test_dockerignore_uses_simple_patterns keeps it that way.
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        if body.startswith("**/"):
            hit = any(fnmatch(part, body[3:]) for part in parts)
        else:
            hit = fnmatch(path, body) or path.startswith(body + "/")
        if hit:
            included = negate
    return included


def dockerignore() -> list[str]:
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerignore_uses_simple_patterns() -> None:
    patterns = dockerignore()
    assert patterns[0] == "*"  # allow-list: nothing new slips into the context by accident
    assert all(re.fullmatch(r"!?(\*\*/)?[\w.*-]+/?", p) for p in patterns), patterns


def test_build_context_is_small_and_has_what_the_dockerfile_copies() -> None:
    patterns = dockerignore()
    files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.relative_to(ROOT).parts]
    context = [p for p in files if dockerignore_includes(p.relative_to(ROOT).as_posix(), patterns)]
    size = sum(p.stat().st_size for p in context)
    assert size < 2_000_000, f"build context {size} bytes"
    names = {p.relative_to(ROOT).as_posix() for p in context}
    assert not [n for n in names if n.startswith((".venv/", "tests/", "bench/")) or "__pycache__" in n]
    for word, rest in stages()[0]:
        if word == "COPY":
            for source in rest.split()[:-1]:
                assert any(n == source or n.startswith(source.rstrip("/") + "/") for n in names), source


# --- the lock and the wheel ------------------------------------------------------------------------


def lock_pins() -> dict[str, tuple[str, str]]:
    """name -> (version, the entry's text) from requirements.lock."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[A-Za-z0-9])", re.sub(r"^#.*\n", "", text, flags=re.MULTILINE))
    pins: dict[str, tuple[str, str]] = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", entry)
        if match:
            pins[str(canonicalize_name(match.group(1)))] = (match.group(2), entry)
    return pins


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = lock_pins()
    requirements = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    requirements += [Requirement(r) for r in pyproject["build-system"]["requires"]]
    linux = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate(linux):
            continue
        name = str(canonicalize_name(req.name))
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} does not satisfy {req}"
    for pinned, (_, entry) in pins.items():
        assert "--hash=sha256:" in entry, f"{pinned} has no hash"


def test_license_ships_in_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "LICENSE" in pyproject["project"]["license-files"]
    assert (ROOT / "LICENSE").is_file()
    build_copies = " ".join(rest for word, rest in stages()[0] if word == "COPY")
    assert "LICENSE" in build_copies.split()


# --- Kubernetes ------------------------------------------------------------------------------------


def kubernetes_docs() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes.yaml").read_text(encoding="utf-8")))
    return {doc["kind"]: doc for doc in docs}


def test_kubernetes_example_is_valid_against_the_api_schema() -> None:
    docs = kubernetes_docs()
    assert set(docs) == {"Secret", "PersistentVolumeClaim", "Deployment"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validator_rejects_a_broken_manifest() -> None:
    deployment = kubernetes_docs()["Deployment"]
    broken = {**deployment, "spec": {**deployment["spec"], "terminationGracePeriod": 45}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kubernetes_deployment_keeps_one_bridge_its_journal_and_a_long_enough_grace() -> None:
    docs = kubernetes_docs()
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > shutdown_budget(env)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    secret_dir = env["CAPTURE_BRIDGE_CLOUD__PASSWORD_FILE"].rsplit("/", 1)[0]
    assert volumes[mounts[secret_dir]]["secret"]["secretName"] == docs["Secret"]["metadata"]["name"]
    assert "CAPTURE_BRIDGE_CLOUD__PASSWORD" not in env


def test_kubernetes_probes_and_security_match_the_image() -> None:
    pod = kubernetes_docs()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    image_env = dict(stages()[-1])["ENV"]
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert f"CAPTURE_BRIDGE_METRICS__PORT={ports[get['port']]}" in image_env
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid, gid = (int(n) for n in dict(stages()[-1])["USER"].split(":"))
    assert pod["securityContext"]["runAsUser"] == uid
    # The journal volume and the secret files (mode 0440) belong to this group: readable by the bridge.
    assert pod["securityContext"]["fsGroup"] == gid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_deployment_docs_tie_the_grace_period_to_the_timeouts() -> None:
    docker = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "stop_grace_period" in docker
    assert "terminationGracePeriodSeconds" in docker
    assert "shutdown_timeout" in docker
    assert "read_timeout" in docker


def scale_out_docs() -> dict[str, dict[str, Any]]:
    text = (ROOT / "examples" / "kubernetes-scale-out.yaml").read_text(encoding="utf-8")
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text)}


def test_kubernetes_scale_out_example_is_valid_against_the_api_schema() -> None:
    docs = scale_out_docs()
    assert set(docs) == {"Secret", "Service", "StatefulSet", "PodDisruptionBudget"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_scale_out_members_each_have_a_client_id_a_journal_and_one_group() -> None:
    docs = scale_out_docs()
    spec = docs["StatefulSet"]["spec"]
    assert spec["replicas"] > 1
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # Each member's client_id is its pod's name: distinct, and the same after a restart.
    assert env["CAPTURE_BRIDGE_MQTT__CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CAPTURE_BRIDGE_MQTT__SHARED_GROUP"]["value"]
    values = {name: e["value"] for name, e in env.items() if "value" in e}
    assert pod["terminationGracePeriodSeconds"] > shutdown_budget(values)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}  # one per member
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["selector"] == spec["selector"]
    assert pdb["maxUnavailable"] == 1
    # The env the bridge reads is a valid config for a member.
    config = load_config(None, environ={**values, "CAPTURE_BRIDGE_MQTT__CLIENT_ID": "capture-bridge-0",
                                        "CAPTURE_BRIDGE_CLOUD__PASSWORD": "x",
                                        "CAPTURE_BRIDGE_CLOUD__PASSWORD_FILE": ""})
    assert config.mqtt.shared_group == "capture"
