"""The arrows of the package, read from the source (every import, top-level or not):
gateway features stand side by side (none imports another), core never reaches up into
the gateway, the model imports nothing of the service above it, and no production
module imports the dev tooling."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE = REPO / "service"
GATEWAY = SERVICE / "gateway"
FEATURES = sorted(p.name for p in GATEWAY.iterdir() if (p / "__init__.py").exists())


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(SERVICE)}: {module}"
        for path in sorted(folder.rglob("*.py"))
        for module in sorted(imports(path))
        if any(module == name or module.startswith(name + ".") for name in forbidden)
    ]


def test_the_gateway_has_feature_folders() -> None:
    assert {"embed", "segment", "everything", "edges", "embeddings", "labelstudio"} <= set(FEATURES)


def test_no_gateway_feature_imports_another() -> None:
    found = []
    for feature in FEATURES:
        others = tuple(f"service.gateway.{f}" for f in FEATURES if f != feature)
        found += offenders(GATEWAY / feature, others)
    assert found == []


def test_core_never_imports_the_gateway() -> None:
    assert offenders(SERVICE / "core", ("service.gateway",)) == []


def test_the_model_imports_nothing_above_it() -> None:
    above = ("service.core", "service.gateway", "service.settings", "service.fetch_weights")
    assert offenders(SERVICE / "model", (*above, "devtools")) == []


def test_no_production_module_imports_the_dev_tooling() -> None:
    assert not (SERVICE / "devtools").exists()
    assert offenders(SERVICE, ("devtools",)) == []


def test_the_images_carry_no_dev_tooling() -> None:
    """The gateway image copies service/ only; the Triton image runs one script of devtools/
    at build time (the CPU configs) and removes it."""
    copied = {
        dockerfile.name: [
            line.split()[1]
            for line in dockerfile.read_text().splitlines()
            if line.startswith("COPY ") and "--from" not in line
        ]
        for dockerfile in (REPO / "docker").glob("*.Dockerfile")
    }
    assert not [p for p in copied["gateway.Dockerfile"] if p.startswith("devtools")]
    assert [p for p in copied["triton.Dockerfile"] if p.startswith("devtools")] == [
        "devtools/triton_config.py"
    ]
    assert "rm /tmp/triton_config.py" in (REPO / "docker" / "triton.Dockerfile").read_text()
