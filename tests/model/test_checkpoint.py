"""Strict checkpoint loading and its error messages."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from service.errors import CheckpointError
from service.model import (
    VARIANTS,
    Variant,
    build_model,
    infer_variant,
    load_model,
    random_model,
    read_state_dict,
)
from tests.conftest import Fixture, fixtures_dir


@pytest.fixture(scope="module")
def official_shapes(fixture: Fixture) -> dict[str, dict[str, list[int]]]:
    shapes: dict[str, dict[str, list[int]]] = json.loads(
        (fixtures_dir() / "state_dict_shapes.json").read_text()
    )
    return shapes


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_matches_official_keys_and_shapes(
    variant: Variant, official_shapes: dict[str, dict[str, list[int]]]
) -> None:
    model = random_model(variant)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes[variant]


def test_variant_is_inferred(fixture: Fixture) -> None:
    model = load_model(fixture.checkpoint)
    assert model.config.variant == "ti"
    s_state = random_model("s").state_dict()
    assert infer_variant(s_state) == "s"
    assert build_model(s_state).config.variant == "s"


def test_zip_wrapped_checkpoint_loads(fixture: Fixture, tmp_path: Path) -> None:
    wrapped = tmp_path / "efficient_sam_vitt.pt.zip"
    with zipfile.ZipFile(wrapped, "w") as archive:
        archive.write(fixture.checkpoint, "weights/efficient_sam_vitt.pt")
    loaded = read_state_dict(wrapped)
    original = read_state_dict(fixture.checkpoint)
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_wrong_variant_names_the_variant_and_the_shapes(fixture: Fixture) -> None:
    with pytest.raises(
        CheckpointError, match=r"EfficientSAM-s.*shape mismatch.*expects \["
    ) as info:
        load_model(fixture.checkpoint, variant="s")
    assert "image_encoder" in info.value.message


def test_truncated_checkpoint(fixture: Fixture, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    data = fixture.checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(truncated)


def test_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("these are not the weights you are looking for\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(text)


def test_foreign_checkpoint_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, foreign)
    with pytest.raises(CheckpointError, match="missing keys") as info:
        load_model(foreign, variant="ti")
    assert "unexpected keys: encoder.weight" in info.value.message
    with pytest.raises(CheckpointError, match=r"no image_encoder\.patch_embed"):
        load_model(foreign)


def test_zip_without_checkpoint(tmp_path: Path) -> None:
    archive_path = tmp_path / "weights.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("README.txt", "nothing here")
    with pytest.raises(CheckpointError, match=r"exactly one \.pt"):
        load_model(archive_path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.pt")
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_model(empty)


def test_pickle_that_is_not_a_state_dict(tmp_path: Path) -> None:
    odd = tmp_path / "list.pt"
    torch.save([1, 2, 3], odd)
    with pytest.raises(CheckpointError, match="not an EfficientSAM checkpoint"):
        load_model(odd)
