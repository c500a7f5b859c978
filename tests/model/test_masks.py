"""Mask upsampling and encodings, checked with independent decoders."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from service.model.masks import (
    Polygon,
    compress_rle,
    counts_area_bbox,
    encode_png,
    encode_rle,
    mask_to_polygons,
    rle_area_bbox,
    run_lengths,
    upsample_masks,
)
from tests.model.conformance import mask_iou, unpack_masks


def ring_mask() -> np.ndarray:
    """A 30×20 rectangle with a 6×4 hole, plus a separate 3×3 blob."""
    mask = np.zeros((50, 70), dtype=bool)
    mask[10:30, 5:35] = True
    mask[18:22, 15:21] = False
    mask[40:43, 60:63] = True
    return mask


def test_upsample_reproduces_the_reference_masks(expected: dict[str, np.ndarray]) -> None:
    """The reference's own full-size masks from its own low-res logits (the fixture)."""
    logits = torch.from_numpy(expected["low_res_logits_multimask"][0])  # [5, 3, 256, 256]
    masks = upsample_masks(logits, 603, 1072).numpy()
    assert masks.shape == (5, 3, 603, 1072)
    reference = unpack_masks(expected)
    for q in range(5):
        for k in range(3):
            assert mask_iou(masks[q, k], reference[q, k]) >= 0.999


def test_upsample_thresholds_at_zero_inclusive() -> None:
    flat = torch.zeros(1, 256, 256)
    assert upsample_masks(flat, 10, 20).all()  # logits == 0 count as inside (>= 0)
    assert not upsample_masks(flat - 1e-3, 10, 20).any()


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


def rasterise(polygons: list[Polygon], shape: tuple[int, ...]) -> np.ndarray:
    """What a client draws: each polygon filled, its holes cleared, the polygons united."""
    canvas = np.zeros(shape, dtype=np.uint8)
    for polygon in polygons:
        layer = np.zeros(shape, dtype=np.uint8)
        cv2.fillPoly(layer, [np.array(polygon["exterior"], dtype=np.int32)], (1,))
        for hole in polygon["holes"]:
            cv2.fillPoly(layer, [np.array(hole, dtype=np.int32)], (0,))
        canvas |= layer
    return canvas.astype(bool)


def blobs(seed: int, shape: tuple[int, int] = (200, 300)) -> np.ndarray:
    noise = np.random.default_rng(seed).random(shape).astype(np.float32)
    return np.asarray(cv2.GaussianBlur(noise, (0, 0), 3) > 0.5)


def island_in_a_hole() -> np.ndarray:
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:55, 5:55] = True
    mask[15:45, 15:45] = False
    mask[25:35, 25:35] = True
    return mask


def diagonal_joint() -> np.ndarray:
    """A 4-connected hole that wraps around a pixel joined to its component diagonally."""
    mask = np.zeros((9, 9), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    mask[4, 4] = True  # alone in the hole, but diagonal to nothing: an island
    mask[2, 6] = False
    mask[3, 6] = True  # joined to the wall only across a diagonal of the hole
    return mask


@pytest.mark.parametrize(
    "mask",
    [ring_mask(), island_in_a_hole(), diagonal_joint(), blobs(1), blobs(2), blobs(3)],
    ids=["ring", "island", "diagonal", "blobs1", "blobs2", "blobs3"],
)
def test_polygons_rasterise_back_to_the_mask(mask: np.ndarray) -> None:
    drawn = rasterise(mask_to_polygons(mask), mask.shape)
    assert mask_iou(drawn, mask) >= 0.98


def test_polygons_of_speckle_rasterise_back(expected: dict[str, np.ndarray]) -> None:
    """The random-weight fixture's masks are speckle: the hardest case for holes."""
    mask = unpack_masks(expected)[0, 0][:200, :300]
    assert mask_iou(rasterise(mask_to_polygons(mask), mask.shape), mask) >= 0.98


def test_polygons_keep_holes() -> None:
    mask = ring_mask()
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    big = max(polygons, key=lambda p: len(p["exterior"]) + 100 * len(p["holes"]))
    assert len(big["holes"]) == 1
    # the hole ring runs through the hole's own pixels: x 15..20, y 18..21
    hole = np.array(big["holes"][0])
    assert (hole[:, 0].min(), hole[:, 0].max(), hole[:, 1].min(), hole[:, 1].max()) == (
        15,
        20,
        18,
        21,
    )
    xs = [x for x, _ in big["exterior"]]
    ys = [y for _, y in big["exterior"]]
    assert (min(xs), max(xs), min(ys), max(ys)) == (5, 34, 10, 29)


def test_empty_mask_has_no_polygons() -> None:
    assert mask_to_polygons(np.zeros((5, 5), dtype=bool)) == []


def test_run_lengths_are_pycocotools_own() -> None:
    """Device-side run lengths, compressed, equal pycocotools' encoding of the same masks
    (random masks of every density and size, all-0 and all-1 masks, 1-pixel masks)."""
    rng = np.random.default_rng(7)
    shapes = [(1, 1), (1, 5), (5, 1), (7, 9), (32, 17)]
    for trial in range(120):
        height, width = shapes[trial % len(shapes)]
        masks = rng.random((4, height, width)) < rng.random()
        masks[1] = trial % 2 == 0  # all 1s or all 0s
        masks[2, 0, 0] = True  # starts with a 1: an empty run of 0s first
        lengths, counts = run_lengths(torch.from_numpy(masks))
        assert lengths.dtype == counts.dtype == torch.int64
        assert int(lengths.sum()) == len(counts)
        runs = torch.split(counts, lengths.tolist())
        for mask, own in zip(masks, runs, strict=True):
            oracle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
            # pycocotools' own compression of these run lengths, and its area and box
            theirs = coco_mask.frPyObjects(
                {"size": [height, width], "counts": own.tolist()}, height, width
            )
            assert theirs["counts"] == oracle["counts"]
            ours = compress_rle(own.numpy(), height, width)
            assert ours["counts"] == oracle["counts"].decode()
            area, bbox = counts_area_bbox(own.numpy(), height)
            assert area == int(coco_mask.area(oracle)) == int(mask.sum())
            assert bbox == [float(v) for v in coco_mask.toBbox(oracle)]
            assert int(own.sum()) == height * width
    # counts of every size: long runs (several 5-bit groups), negative differences
    big = np.zeros((3000, 4000), dtype=bool)
    big[5:2990, 7:3990] = True
    big[::7, ::3] = False
    big[-1, -1] = True
    _, counts = run_lengths(torch.from_numpy(big)[None])
    oracle = coco_mask.encode(np.asfortranarray(big, dtype=np.uint8))
    assert compress_rle(counts.numpy(), 3000, 4000)["counts"] == oracle["counts"].decode()
    assert counts_area_bbox(counts.numpy(), 3000)[1] == [float(v) for v in coco_mask.toBbox(oracle)]
    ring = torch.from_numpy(ring_mask())[None]
    _, counts = run_lengths(ring)
    decoded = coco_mask.decode(
        coco_mask.frPyObjects({"size": [50, 70], "counts": counts.tolist()}, 50, 70)
    )
    assert np.array_equal(decoded.astype(bool), ring_mask())
