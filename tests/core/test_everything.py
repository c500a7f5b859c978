"""Segment everything's building blocks on synthetic masks, against hand-computed values.

(The random-weight fixture makes every mask speckle over the whole image, so it
cannot exercise NMS between different boxes, stability or small regions.)
"""

from __future__ import annotations

import dataclasses
from typing import cast

import numpy as np
import pytest
import torch

from service.core.everything import (
    Crop,
    EverythingParams,
    Proposal,
    box_nms,
    crop_boxes,
    mask_boxes,
    near_crop_edge,
    point_grid,
    remove_small_regions,
    rles_counted,
    rles_on_host,
    segment_everything,
    select,
    stability_scores,
)
from service.model import EfficientSam
from service.model.masks import encode_rle


def test_grid_is_cell_centres_with_x_fastest() -> None:
    grid = point_grid(2, width=100, height=40)
    # (i + 0.5) / 2 · 100 = 25, 75; (j + 0.5) / 2 · 40 = 10, 30; point k = (k mod 2, k div 2)
    assert grid.tolist() == [[25, 10], [75, 10], [25, 30], [75, 30]]
    assert point_grid(1, 1072, 603).tolist() == [[536.0, 301.5]]


def test_stability_counts_pixels_above_plus_and_minus_offset() -> None:
    logits = torch.tensor(
        [
            [[2.0, 0.5, -0.5, -2.0]],  # > 1: 1 pixel; > -1: 3 pixels → 1/3
            [[3.0, 3.0, -3.0, -3.0]],  # 2 / 2 = 1
            [[-5.0, -5.0, -5.0, -5.0]],  # 0 / 0: NaN, never kept
        ]
    )
    scores = stability_scores(logits, offset=1.0)
    assert scores[0].item() == pytest.approx(1 / 3)
    assert scores[1].item() == 1.0
    assert torch.isnan(scores[2])
    # the comparison is strict: a logit equal to the offset is not above it
    assert stability_scores(torch.tensor([[[1.0, 0.0]]]), 1.0).item() == pytest.approx(0 / 2)


def test_boxes_are_tight_and_inclusive_and_zero_when_empty() -> None:
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True  # rows 1-2, columns 2-4
    masks[1, 4, 0] = True  # a single pixel at x 0, y 4
    boxes = mask_boxes(masks)
    assert boxes.tolist() == [[2, 1, 4, 2], [0, 4, 0, 4], [0, 0, 0, 0]]


def test_nms_keeps_the_best_and_drops_overlaps_above_the_threshold() -> None:
    boxes = np.array(
        [
            [0, 0, 10, 10],  # area 100
            [0, 0, 10, 8],  # IoU with box 0: 80 / 100 = 0.8
            [0, 0, 10, 5],  # IoU with box 0: 50 / 100 = 0.5
            [20, 20, 30, 30],  # disjoint
        ]
    )
    scores = np.array([0.9, 0.95, 0.5, 0.1])
    # box 1 first (best score); box 0 overlaps it 80/100 = 0.8 > 0.7: dropped; box 2:
    # 50 / 80 = 0.625 ≤ 0.7: kept; box 3 disjoint: kept
    assert box_nms(boxes, scores, 0.7) == [1, 2, 3]
    # the comparison is strict: an IoU equal to the threshold survives
    assert box_nms(boxes, scores, 0.625) == [1, 2, 3]
    # at 0.6 box 2 (0.625) goes too
    assert box_nms(boxes, scores, 0.6) == [1, 3]
    # 1.0 disables NMS: everything, best first
    assert box_nms(boxes, scores, 1.0) == [1, 0, 2, 3]


def test_nms_breaks_ties_by_candidate_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    assert box_nms(boxes, np.array([0.5, 0.5, 0.5]), 0.7) == [0]
    assert box_nms(boxes, np.array([0.5, 0.5, 0.5]), 1.0) == [0, 1, 2]


def test_nms_uses_torchvision_areas_for_inclusive_boxes() -> None:
    # (x1 - x0) · (y1 - y0): a one-pixel-wide box has area 0 and suppresses nothing
    boxes = np.array([[5, 0, 5, 10], [5, 0, 5, 10]])
    assert box_nms(boxes, np.array([1.0, 0.5]), 0.0) == [0, 1]


def test_small_holes_are_filled_and_small_islands_removed() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 2:12] = True  # a 10×10 square (100 px)
    mask[5:7, 5:7] = False  # a 4-pixel hole in it
    mask[16:18, 16:18] = True  # a 4-pixel island
    cleaned, changed = remove_small_regions(mask, min_area=10)
    assert changed
    expected = np.zeros((20, 20), dtype=bool)
    expected[2:12, 2:12] = True
    assert (cleaned == expected).all()
    # a threshold below both regions changes nothing
    same, changed = remove_small_regions(mask, min_area=4)
    assert not changed
    assert (same == mask).all()


def test_when_every_island_is_small_the_largest_stays() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[0:2, 0:3] = True  # 6 px
    mask[10:12, 10:12] = True  # 4 px
    cleaned, changed = remove_small_regions(mask, min_area=50)
    assert changed
    assert cleaned.sum() == 6
    assert cleaned[0:2, 0:3].all()


def _proposal(mask: np.ndarray, iou: float, stability: float = 1.0) -> Proposal:
    ys, xs = np.nonzero(mask)
    return Proposal(
        rle=encode_rle(mask),
        area=int(mask.sum()),
        box=(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
        predicted_iou=iou,
        stability_score=stability,
        point=(0.0, 0.0),
    )


def test_select_ranks_by_the_chosen_score_and_caps_the_count() -> None:
    a = np.zeros((30, 30), dtype=bool)
    a[0:10, 0:10] = True
    b = np.zeros((30, 30), dtype=bool)
    b[15:25, 15:25] = True
    c = np.zeros((30, 30), dtype=bool)
    c[0:10, 18:28] = True
    candidates = [_proposal(a, 0.90, 0.80), _proposal(b, 0.95, 0.70), _proposal(c, 0.85, 0.99)]
    by_iou = select([candidates], EverythingParams(box_nms_thresh=0.7))
    assert [p.predicted_iou for p in by_iou] == [0.95, 0.90, 0.85]
    # means: a 0.85, b 0.825, c 0.92
    by_mean = select([candidates], EverythingParams(rank_by="iou_stability_mean"))
    assert [p.predicted_iou for p in by_mean] == [0.85, 0.90, 0.95]
    assert len(select([candidates], EverythingParams(max_masks=2))) == 2


def test_after_cleaning_nms_prefers_the_unchanged_mask() -> None:
    # two masks of nearly the same box; the better-ranked one has a 4-pixel island
    # far away that the clean-up removes, so its box shrinks onto the other's
    base = np.zeros((40, 40), dtype=bool)
    base[0:10, 0:10] = True
    speckled = base.copy()
    speckled[35:37, 35:37] = True
    candidates = [_proposal(speckled, 0.95), _proposal(base, 0.90)]
    # without clean-up their boxes differ (IoU 81 / 1296 with torchvision areas): both stay
    assert len(select([candidates], EverythingParams(box_nms_thresh=0.7))) == 2
    kept = select([candidates], EverythingParams(box_nms_thresh=0.7, min_mask_region_area=10))
    # cleaned, the two are the same square: NMS keeps the one that did not change
    assert [p.predicted_iou for p in kept] == [0.90]
    assert kept[0].area == 100


def test_crop_boxes_overlap_as_sam_lays_them_out() -> None:
    # layer 1 on 1000×600: 2 per side, overlap int(512/1500 · 600 · 2/2) = 204,
    # crop 602 = ceil((1000 + 204) / 2) wide and 402 = ceil((600 + 204) / 2) high,
    # starting every 602 - 204 = 398 px across and 402 - 204 = 198 px down
    assert crop_boxes(1000, 600, 1) == [
        (0, 0, 1000, 600),
        (0, 0, 602, 402),
        (398, 0, 1000, 402),
        (0, 198, 602, 600),
        (398, 198, 1000, 600),
    ]
    # layer 2 adds 16 more: overlap int(204.8 · 2/4) = 102, crops ceil((1000 + 306) / 4) = 327
    # by ceil((600 + 306) / 4) = 227
    two = crop_boxes(1000, 600, 2)
    assert len(two) == 1 + 4 + 16
    assert two[5] == (0, 0, 327, 227)
    assert two[6] == (225, 0, 552, 227)
    assert two[-1] == (675, 375, 1000, 600)


def test_crops_past_a_tiny_image_are_left_out() -> None:
    # 1×1: overlap int(0.34 · 1) = 0, crops ceil(1 / 2) = 1 px every 1 px: only the first
    # of each layer has a pixel (the others would start at x or y = 1, past the edge), and
    # that one is the whole image again: listed once
    assert crop_boxes(1, 1, 2) == [(0, 0, 1, 1)]
    # 3×2, layer 1: overlap int(0.34 · 2) = 0, crops 2 × 1 every 2 across, 1 down
    assert crop_boxes(3, 2, 1) == [
        (0, 0, 3, 2),
        (0, 0, 2, 1),
        (2, 0, 3, 1),
        (0, 1, 2, 2),
        (2, 1, 3, 2),
    ]


def test_masks_cut_by_an_inner_crop_edge_are_flagged() -> None:
    crop = (398, 0, 1000, 402)
    boxes = np.array(
        [
            [400, 10, 500, 100],  # 2 px from the crop's left edge, which is inside the image
            [600, 0, 999, 300],  # touches the crop's top and right: both are image edges
            [600, 100, 800, 390],  # 12 px above the crop's bottom edge, inside the image
            [500, 100, 800, 300],  # well inside
        ]
    )
    assert near_crop_edge(boxes, crop, 1000, 600).tolist() == [True, False, True, False]


def test_across_crops_nms_prefers_the_smaller_crop() -> None:
    square = np.zeros((30, 30), dtype=bool)
    square[5:15, 5:15] = True
    other = np.zeros((30, 30), dtype=bool)
    other[20:28, 20:28] = True
    from_image = dataclasses.replace(_proposal(square, 0.95), crop_area=900)
    from_crop = dataclasses.replace(_proposal(square, 0.90), crop_area=400)
    elsewhere = dataclasses.replace(_proposal(other, 0.80), crop_area=900)
    kept = select([[from_image, elsewhere], [from_crop]], EverythingParams())
    # the same square from the whole image and from a crop: the crop's wins despite its
    # lower score; the output is then in score order
    assert [(p.predicted_iou, p.crop_area) for p in kept] == [(0.90, 400), (0.80, 900)]


class BlobDecoder:
    """Stands in for the mask decoder (the thing under test is the crop pipeline around
    it): token 1 and 2 are a disc of radius 6 low-res pixels around the prompt point,
    token 3 covers the whole crop; predicted IoU 0.9, 0.8, 0.95."""

    class config:  # noqa: N801 - mimics EfficientSam.config
        img_size = 1024

    def decode(
        self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(points)
        centres = points[:, 0] / 4  # 1024 frame → 256 frame
        grid = torch.arange(256, dtype=torch.float32) + 0.5
        dx = grid[None, None, :] - centres[:, 0, None, None]
        dy = grid[None, :, None] - centres[:, 1, None, None]
        disc = torch.where(dx**2 + dy**2 < 36, 10.0, -10.0)
        logits = torch.stack([disc, disc, torch.full_like(disc, 10.0)], dim=1)
        return logits, torch.tensor([[0.9, 0.8, 0.95]]).expand(n, 3)


def test_crops_place_masks_in_the_image_and_drop_those_cut_by_inner_edges() -> None:
    width, height = 1000, 600
    crops = [Crop(box, torch.zeros(1, 256, 64, 64)) for box in crop_boxes(width, height, 1)]
    params = EverythingParams(
        points_per_side=2, pred_iou_thresh=0.5, stability_score_thresh=0.9, box_nms_thresh=0.7
    )
    model = cast(EfficientSam, BlobDecoder())
    found = segment_everything(model, crops, width, height, params)
    # the whole-image mask once (the four identical ones collapse onto the first point's),
    # none of the crops' whole-crop masks (cut by inner edges); one disc per grid point
    # of the image and of each crop (1 + 4 + 4 × 4), less 4: the top crops' lower points
    # (y 301.5) and the bottom crops' upper points (y 198 + 100.5 = 298.5) find the same
    # discs 3 px apart, and NMS across crops keeps the first (equal crop sizes)
    assert len(found) == 17
    points = {p.point for p in found}
    assert {(150.5, 301.5), (849.5, 301.5)} <= points
    assert not {(150.5, 298.5), (849.5, 298.5)} & points
    assert (found[0].box, found[0].point) == ((0, 0, 999, 599), (250.0, 150.0))
    discs = found[1:]
    assert all(p.predicted_iou == pytest.approx(0.9) for p in discs)
    # crop (398, 0, 1000, 402) 602×402: its first grid point is (398 + 150.5, 100.5)
    disc = next(p for p in discs if p.point == (548.5, 100.5))
    assert disc.crop_area == 602 * 402
    mask = disc.mask
    assert mask.shape == (height, width)
    assert mask[100, 548]  # the disc sits around its point, in the image's pixels
    x0, y0, x1, y1 = disc.box
    assert abs((x0 + x1) / 2 - 548.5) <= 2
    assert abs((y0 + y1) / 2 - 100.5) <= 2
    # radius 6 low-res pixels = 6 · 602/256 ≈ 14 px across, 6 · 402/256 ≈ 9.4 px down
    assert 26 <= x1 - x0 <= 30
    assert 17 <= y1 - y0 <= 20
    assert mask.sum() == disc.area
    assert not mask[:, :x0].any()
    assert not mask[y1 + 1 :].any()


def test_full_size_logits_are_made_in_chunks_under_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    interpolate = torch.nn.functional.interpolate

    def counting(x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sizes.append(len(x))
        return interpolate(x, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    width, height = 1000, 600
    crop = [Crop((0, 0, width, height), torch.zeros(1, 256, 64, 64))]
    params = EverythingParams(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.9)
    model = cast(EfficientSam, BlobDecoder())
    per_candidate = width * height * (4 + 1 + 2)  # float32 logits, bool mask, temporaries
    chunked = segment_everything(
        model, crop, width, height, params, memory_budget_bytes=3 * per_candidate
    )
    # 16 points × 3 candidates in one decoder call (batch 64), upsampled 3 at a time
    assert sizes == [3] * 16
    sizes.clear()
    whole = segment_everything(model, crop, width, height, params, memory_budget_bytes=1 << 40)
    assert sizes == [48]
    assert [(p.rle, p.box, p.point) for p in chunked] == [(p.rle, p.box, p.point) for p in whole]


@pytest.mark.parametrize(
    ("box", "budget"),
    [((0, 0, 90, 60), 1 << 30), ((30, 20, 75, 51), 1 << 30), ((30, 20, 75, 51), 1)],
    ids=["whole image", "a crop", "a crop, one mask per group"],
)
def test_run_lengths_counted_on_the_device_are_pycocotools_rles(
    box: tuple[int, int, int, int], budget: int
) -> None:
    """The GPU's way (run lengths counted by torch, compressed here) against pycocotools,
    the oracle, for masks of the whole image and of a crop placed in it."""
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(7)
    masks = rng.random((5, y1 - y0, x1 - x0)) > 0.6
    masks[1] = True  # one run of 1s
    masks[2, :, :3] = False  # starts with 0s
    masks[3] = False
    masks[3, -1, -1] = True  # a single pixel at the end
    expected = []
    for mask in masks:
        full = np.zeros((60, 90), dtype=bool)
        full[y0:y1, x0:x1] = mask
        expected.append(encode_rle(full))
    tensor = torch.from_numpy(masks)
    assert rles_counted(tensor, box, 90, 60, budget) == expected
    assert rles_on_host(tensor, box, 90, 60) == expected
