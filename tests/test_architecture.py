"""The arrows of the package, read from the source (every import, top-level or not):
gateway features stand side by side (none imports another), core never reaches up into
the gateway, the model imports nothing of the service above it, and no production
module imports the dev tooling."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"
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


#: the one exception left: the download command's default folder is the gateway's own
#: setting (ESAM_WEIGHTS_DIR), read through Settings inside its main(), not at import
MODEL_EXCEPTIONS = ["model/weights.py: service.settings"]


def test_the_model_imports_nothing_above_it() -> None:
    above = ("service.core", "service.gateway", "service.settings", "service.devtools")
    assert offenders(SERVICE / "model", above) == MODEL_EXCEPTIONS


def test_no_production_module_imports_the_dev_tooling() -> None:
    found = [
        entry
        for entry in offenders(SERVICE, ("service.devtools",))
        if not entry.startswith("devtools/")
    ]
    assert found == []
