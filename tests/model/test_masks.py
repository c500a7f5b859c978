"""Mask upsampling and encodings, checked with independent decoders."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from service.model.masks import (
    encode_png,
    encode_rle,
    mask_to_polygons,
    rle_area_bbox,
    upsample_masks,
)


def ring_mask() -> np.ndarray:
    """A 30×20 rectangle with a 6×4 hole, plus a separate 3×3 blob."""
    mask = np.zeros((50, 70), dtype=bool)
    mask[10:30, 5:35] = True
    mask[18:22, 15:21] = False
    mask[40:43, 60:63] = True
    return mask


def test_upsample_is_bicubic_then_threshold() -> None:
    logits = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    masks = upsample_masks(logits, 123, 77)
    assert masks.shape == (2, 3, 123, 77)
    assert masks.dtype == torch.bool
    reference = torch.nn.functional.interpolate(logits, (123, 77), mode="bicubic") >= 0
    assert torch.equal(masks, reference)


def test_rle_decodes_with_pycocotools() -> None:
    mask = ring_mask()
    rle = encode_rle(mask)
    assert rle["size"] == [50, 70]
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_area_and_bbox() -> None:
    mask = ring_mask()
    area, bbox = rle_area_bbox(encode_rle(mask))
    assert area == int(mask.sum()) == 30 * 20 - 6 * 4 + 9
    assert bbox == [5.0, 10.0, 58.0, 33.0]  # x from 5 to 62, y from 10 to 42
    assert rle_area_bbox(encode_rle(np.zeros((4, 4), dtype=bool))) == (0, [0.0, 0.0, 0.0, 0.0])


def test_png_decodes_with_pillow() -> None:
    mask = ring_mask()
    data = encode_png(mask)
    assert data.startswith(b"\x89PNG")
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0
    np.testing.assert_array_equal(decoded, mask)
    assert base64.b64decode(base64.b64encode(data)) == data


def test_polygons_keep_holes() -> None:
    mask = ring_mask()
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    big = max(polygons, key=lambda p: len(p["exterior"]) + 100 * len(p["holes"]))
    assert len(big["holes"]) == 1
    # Rasterise back: exterior filled minus hole filled reproduces the mask's interior.
    canvas = np.zeros(mask.shape, dtype=np.uint8)
    for polygon in polygons:
        cv2.fillPoly(canvas, [np.array(polygon["exterior"], dtype=np.int32)], (1,))
        for hole in polygon["holes"]:
            cv2.fillPoly(canvas, [np.array(hole, dtype=np.int32)], (0,))
    # boundary pixels of holes are traced on the mask side: compare interiors
    assert np.logical_xor(canvas.astype(bool), mask).sum() <= 2 * (6 + 4)
    xs = [x for x, _ in big["exterior"]]
    ys = [y for _, y in big["exterior"]]
    assert (min(xs), max(xs), min(ys), max(ys)) == (5, 34, 10, 29)


def test_empty_mask_has_no_polygons() -> None:
    assert mask_to_polygons(np.zeros((5, 5), dtype=bool)) == []
