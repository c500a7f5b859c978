"""Comparison of model outputs with the fixture, shared by the conformance tests
and by the test that proves those comparisons catch a perturbed fixture."""

from __future__ import annotations

import numpy as np

#: Tolerances from the fixture README.
EMBEDDING_ATOL = 1e-3
LOGITS_ATOL = 5e-4
MASK_MIN_IOU = 0.99

ATOL = {
    "image_embeddings": EMBEDDING_ATOL,
    "low_res_logits_multimask": LOGITS_ATOL,
    "iou_multimask": LOGITS_ATOL,
    "low_res_logits_single": LOGITS_ATOL,
    "iou_single": LOGITS_ATOL,
}


def unpack_masks(expected: dict[str, np.ndarray]) -> np.ndarray:
    shape = tuple(int(s) for s in expected["mask_shape"])
    bits = np.unpackbits(expected["masks_multimask_packed"], axis=-1)[..., : shape[-1]]
    return bits.reshape(shape).astype(bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU over the last two axes; two empty masks count as identical."""
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def array_failures(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """Names (with the deviation) of every array outside its tolerance."""
    failures = []
    for name, atol in ATOL.items():
        if name not in actual:
            continue
        a, e = np.asarray(actual[name]), np.asarray(expected[name])
        if a.shape != e.shape:
            failures.append(f"{name}: shape {a.shape} != {e.shape}")
            continue
        worst = float(np.abs(a.astype(np.float64) - e).max())
        if not worst <= atol:
            failures.append(f"{name}: max |diff| {worst:.3g} > {atol:g}")
    return failures


def mask_failures(masks: np.ndarray, expected_masks: np.ndarray) -> list[str]:
    if masks.shape != expected_masks.shape:
        return [f"masks: shape {masks.shape} != {expected_masks.shape}"]
    ious = mask_iou(masks, expected_masks)
    if not ious.min() >= MASK_MIN_IOU:
        return [f"masks: min IoU {ious.min():.4f} < {MASK_MIN_IOU}"]
    return []
