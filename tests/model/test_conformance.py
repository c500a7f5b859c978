"""The model reproduces the reference on the EfficientSAM-Ti seed-0 fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.model import EfficientSam
from service.model.masks import upsample_masks
from service.model.preprocess import decode_image, resize_to_model
from service.model.prompts import prompts_to_arrays
from tests.conftest import Fixture
from tests.model.conformance import (
    ATOL,
    MASK_MIN_IOU,
    array_failures,
    mask_failures,
    unpack_masks,
)


@pytest.fixture(scope="module")
def outputs(fixture: Fixture, fixture_model: EfficientSam) -> dict[str, np.ndarray]:
    """Run the whole pipeline (decode → resize → encode → prompts → decode → masks)."""
    rgb = decode_image(fixture.image_path.read_bytes())
    height, width = rgb.shape[:2]
    prompts = fixture.prompts()
    points, labels = prompts_to_arrays(prompts, width, height)
    with torch.inference_mode():
        embedding = fixture_model.embed(resize_to_model(rgb)[None])
        multi, iou_multi = fixture_model.decode(
            embedding, torch.from_numpy(points), torch.from_numpy(labels), multimask=True
        )
        single, iou_single = fixture_model.decode(
            embedding, torch.from_numpy(points), torch.from_numpy(labels), multimask=False
        )
        masks = upsample_masks(multi, height, width)
    return {
        "image_embeddings": embedding.numpy(),
        "low_res_logits_multimask": multi[None].numpy(),
        "iou_multimask": iou_multi[None].numpy(),
        "low_res_logits_single": single[None].numpy(),
        "iou_single": iou_single[None].numpy(),
        "masks": masks.numpy(),
    }


def test_image_size_matches_fixture(fixture: Fixture) -> None:
    rgb = decode_image(fixture.image_path.read_bytes())
    assert list(rgb.shape[:2]) == fixture.meta["image_size_hw"]


@pytest.mark.parametrize("name", sorted(ATOL))
def test_arrays_within_tolerance(
    name: str, outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> None:
    assert array_failures({name: outputs[name]}, expected) == []


def test_full_size_masks(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert mask_failures(outputs["masks"], unpack_masks(expected)) == []


def test_prompt_order_does_not_matter(
    fixture_model: EfficientSam, expected: dict[str, np.ndarray]
) -> None:
    """The decoder has no positional encoding over prompt tokens (fixture README)."""
    embedding = torch.from_numpy(expected["image_embeddings"])
    points = torch.tensor([[[100.0, 200.0], [500.0, 600.0], [300.0, 300.0]]])
    labels = torch.tensor([[2.0, 3.0, 1.0]])
    with torch.inference_mode():
        a, _ = fixture_model.decode(embedding, points, labels)
        b, _ = fixture_model.decode(embedding, points[:, [2, 0, 1]], labels[:, [2, 0, 1]])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# --- the comparisons above do catch a wrong result --------------------------------


@pytest.mark.parametrize("name", sorted(ATOL))
def test_perturbed_array_is_caught(
    name: str, outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> None:
    perturbed = {k: v.copy() for k, v in expected.items()}
    flat = perturbed[name].reshape(-1)
    flat[flat.size // 2] += 2 * ATOL[name]
    failures = array_failures({name: outputs[name]}, perturbed)
    assert len(failures) == 1
    assert failures[0].startswith(name)


def test_perturbed_masks_are_caught(
    outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> None:
    masks = unpack_masks(expected)
    perturbed = masks.copy()
    target = perturbed[2, 1]
    area = int(target.sum())
    flips = int(area * (1 - MASK_MIN_IOU) * 2) + 1
    ys, xs = np.nonzero(target)
    target[ys[:flips], xs[:flips]] = False  # shrink one candidate below the IoU bound
    assert mask_failures(outputs["masks"], perturbed) != []
    assert mask_failures(outputs["masks"], masks) == []
