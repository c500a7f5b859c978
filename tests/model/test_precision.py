"""The opt-in reduced-precision encoder path keeps the masks close to float32."""

from __future__ import annotations

import numpy as np
import torch

from service.model import EfficientSam
from service.model.masks import upsample_masks
from service.model.preprocess import decode_image, resize_to_model
from service.model.prompts import prompts_to_arrays
from tests.conftest import Fixture
from tests.model.conformance import mask_iou, unpack_masks

#: Bound for the bf16 encoder (issue: ≥ 0.98 against the float32 path).
BF16_MIN_IOU = 0.98


def test_bf16_encoder_masks(
    fixture: Fixture, fixture_model: EfficientSam, expected: dict[str, np.ndarray]
) -> None:
    rgb = decode_image(fixture.image_path.read_bytes())
    height, width = rgb.shape[:2]
    points, labels = prompts_to_arrays(fixture.prompts(), width, height)
    with torch.inference_mode():
        embedding = fixture_model.embed(resize_to_model(rgb)[None], precision="bf16")
        assert embedding.dtype == torch.float32
        logits, _ = fixture_model.decode(
            embedding, torch.from_numpy(points), torch.from_numpy(labels)
        )
        masks = upsample_masks(logits, height, width).numpy()
    ious = mask_iou(masks, unpack_masks(expected))
    assert ious.min() >= BF16_MIN_IOU, ious
    # and it really is a different computation, not float32 under another name
    assert not np.allclose(embedding.numpy(), expected["image_embeddings"], atol=1e-4)
