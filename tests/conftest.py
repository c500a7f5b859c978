"""Shared test fixtures: where the conformance fixture lives, and the model loaded from it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.model import EfficientSam, load_model
from service.model.prompts import Prompt

REPO_ROOT = Path(__file__).resolve().parents[1]

# gateway, Redis and Triton fixtures, shared across the test folders
pytest_plugins = ["tests.gateway.fixtures", "tests.triton.fixtures"]


def fixtures_dir() -> Path:
    return Path(os.environ.get("ESAM_FIXTURES_DIR", REPO_ROOT.parent / "shared" / "fixtures"))


@dataclass(frozen=True)
class Fixture:
    """The EfficientSAM-Ti seed-0 conformance fixture, read in place."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "efficient_sam_vitt_random_seed0.pt"

    @property
    def image_path(self) -> Path:
        return self.root / "dogs.jpg"

    @property
    def queries(self) -> list[dict[str, Any]]:
        queries: list[dict[str, Any]] = json.loads((self.root / "queries.json").read_text())
        return queries

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.root / "fixture.json").read_text())
        return meta

    def prompts(self) -> list[Prompt]:
        """The queries as API prompts: leading corners labelled 2, 3 become a box."""
        prompts = []
        for query in self.queries:
            points, labels = query["points"], query["labels"]
            if labels[:2] == [2, 3]:
                box = [*points[0], *points[1]]
                prompts.append(Prompt(points=points[2:], labels=labels[2:], box=box))
            else:
                prompts.append(Prompt(points=points, labels=labels))
        return prompts

    def expected(self) -> dict[str, np.ndarray]:
        with np.load(self.root / "expected.npz") as data:
            return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def fixture() -> Fixture:
    root = fixtures_dir() / "efficientsam-ti-seed0"
    if not (root / "expected.npz").is_file():
        message = f"conformance fixture not found at {root} (set ESAM_FIXTURES_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Fixture(root)


@pytest.fixture(scope="session")
def fixture_model(fixture: Fixture) -> EfficientSam:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_model(fixture.checkpoint)


@pytest.fixture(scope="session")
def expected(fixture: Fixture) -> dict[str, np.ndarray]:
    return fixture.expected()


Everything = tuple[dict[str, Any], dict[str, np.ndarray]]


@pytest.fixture(scope="session")
def everything(fixture: Fixture) -> Everything:
    """``everything.json`` and ``everything.npz`` (with ``masks`` unpacked to bool)."""
    params: dict[str, Any] = json.loads((fixture.root / "everything.json").read_text())
    with np.load(fixture.root / "everything.npz") as data:
        arrays = {k: data[k] for k in data.files}
    shape = tuple(int(s) for s in arrays["mask_shape"])
    bits = np.unpackbits(arrays["masks_packed"], axis=-1)[..., : shape[-1]]
    arrays["masks"] = bits.reshape(shape).astype(bool)
    return params, arrays
