"""Segment everything: a grid of point prompts on one embedding, filtered and de-duplicated.

SAM's automatic mask generation semantics, on EfficientSAM (no HTTP here):

1. grid: ``n`` points per side at ((i + 0.5) / n · W, (j + 0.5) / n · H), x varying fastest;
2. one foreground point per prompt, all three multimask candidates kept (candidate order:
   point, then mask token);
3. ``points_per_batch`` prompts per decoder call; candidates at or below ``pred_iou_thresh``
   are dropped before any upsampling;
4. the rest are upsampled (bicubic) to the full image in chunks under a memory budget;
   stability = count(logits > offset) / count(logits > −offset) over those full-size
   logits; mask = logits > 0 (strict); empty masks and those under
   ``stability_score_thresh`` are dropped; the tight box is XYXY with inclusive maxima;
5. greedy box NMS over all kept candidates in ranking order (ties: candidate order),
   dropping every later box whose IoU with a kept one is > ``box_nms_thresh``
   (areas (x1 − x0) · (y1 − y0) as torchvision; 1.0 disables it);
6. with ``min_mask_region_area`` > 0, holes and islands smaller than it are removed from
   each mask, then NMS runs again preferring the masks that did not change;
7. output in ranking order, at most ``max_masks``.

With ``crop_n_layers`` = k > 0 (SAM's crops, for small objects), layer i adds 4^i
overlapping crops (2^i per side, overlap ``CROP_OVERLAP_RATIO`` of the shorter side
at layer 1, halving per layer); each crop has its own embedding and its own
``points_per_side``² grid; masks whose box lies within 20 px of a crop edge that is
not an image edge are dropped; NMS runs within each crop, then across crops
preferring the smaller crop; then steps 6-7.

Masks are kept as COCO RLE between steps (a few kB each for real masks) so that
thousands of candidates on a 12 MP image never sit in memory as pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from pycocotools import mask as coco_mask

from service.model import EfficientSam
from service.model.masks import (
    BoolMask,
    CocoRle,
    compress_rle,
    encode_rle,
    run_lengths,
    upsample_logits,
)

RankBy = Literal["predicted_iou", "iou_stability_mean"]
Box = tuple[int, int, int, int]
#: SAM's crop overlap (of the shorter side, at layer 1) and crop-edge tolerance
CROP_OVERLAP_RATIO = 512 / 1500
CROP_EDGE_PX = 20
#: float32 logits + bool mask + comparison temporaries per upsampled candidate pixel
_BYTES_PER_CANDIDATE_PIXEL = 4 + 1 + 2


@dataclass(frozen=True)
class EverythingParams:
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    rank_by: RankBy = "predicted_iou"
    max_masks: int = 1000
    crop_n_layers: int = 0


@dataclass(frozen=True)
class Crop:
    """One region of the image with its own embedding (the whole image: ``(0, 0, W, H)``)."""

    box: Box  # x0, y0, x1, y1 in the full image, x1 and y1 exclusive
    embedding: torch.Tensor  # [1, 256, 64, 64], of the crop alone


@dataclass(frozen=True)
class Proposal:
    rle: CocoRle
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]  # the grid point (x, y) in pixels
    crop_area: int = 0  # pixels of the crop it came from (NMS across crops prefers small)

    @property
    def mask(self) -> BoolMask:
        raw = {"size": self.rle["size"], "counts": self.rle["counts"].encode("ascii")}
        return np.asarray(coco_mask.decode(raw), dtype=bool)

    def score(self, rank_by: RankBy) -> float:
        if rank_by == "iou_stability_mean":
            return (self.predicted_iou + self.stability_score) / 2
        return self.predicted_iou


def point_grid(points_per_side: int, width: int, height: int) -> NDArray[np.float64]:
    """``[n², 2]`` (x, y) pixel coordinates, x varying fastest."""
    steps = (np.arange(points_per_side, dtype=np.float64) + 0.5) / points_per_side
    ys, xs = np.meshgrid(steps * height, steps * width, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def crop_count(n_layers: int) -> int:
    """How many regions ``crop_boxes`` gives: the image, then 4^i per layer i."""
    return sum(4**layer for layer in range(n_layers + 1))


def densest_grid(max_prompts: int, n_layers: int, ceiling: int) -> int:
    """The largest ``points_per_side`` (at most ``ceiling``) whose prompts over the image
    and its crop layers stay within ``max_prompts``; 0 when not even one point fits."""
    return min(ceiling, math.isqrt(max_prompts // crop_count(n_layers)))


def crop_boxes(width: int, height: int, n_layers: int) -> list[Box]:
    """The whole image, then each layer's 2^i × 2^i overlapping crops, row by row.

    On an image a few pixels wide, SAM's layout places some crops past its edge: those
    (no pixel) are left out, and so is a crop equal to one listed before it (a layer of
    1-pixel crops repeats the whole image; decoding it again would only find the same
    masks), so there are at most ``crop_count(n_layers)`` boxes.
    """
    boxes: list[Box] = [(0, 0, width, height)]
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(CROP_OVERLAP_RATIO * min(width, height) * (2 / per_side))
        crop_w = math.ceil((width + overlap * (per_side - 1)) / per_side)
        crop_h = math.ceil((height + overlap * (per_side - 1)) / per_side)
        for j in range(per_side):
            y0 = (crop_h - overlap) * j
            for i in range(per_side):
                x0 = (crop_w - overlap) * i
                x1, y1 = min(x0 + crop_w, width), min(y0 + crop_h, height)
                box = (x0, y0, x1, y1)
                if x1 > x0 and y1 > y0 and box not in boxes:
                    boxes.append(box)
    return boxes


def near_crop_edge(
    boxes: NDArray[np.int64], crop: Box, width: int, height: int
) -> NDArray[np.bool_]:
    """Boxes (full-image XYXY) within ``CROP_EDGE_PX`` of a crop edge that is not an image edge."""
    crop_edges = np.array(crop, dtype=np.int64)
    image_edges = np.array([0, 0, width, height], dtype=np.int64)
    near_crop = np.abs(boxes - crop_edges) <= CROP_EDGE_PX
    near_image = np.abs(boxes - image_edges) <= CROP_EDGE_PX
    result: NDArray[np.bool_] = (near_crop & ~near_image).any(axis=1)
    return result


def stability_scores(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """``[K, H, W]`` logits → ``[K]``: area above +offset over area above −offset (NaN if 0/0)."""
    high = (logits > offset).sum(dim=(-2, -1), dtype=torch.int64)
    low = (logits > -offset).sum(dim=(-2, -1), dtype=torch.int64)
    return high.double() / low.double()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[K, H, W]`` bool → ``[K, 4]`` int64 tight boxes x0, y0, x1, y1 (inclusive); 0s if empty."""
    k, height, width = masks.shape
    rows = masks.any(dim=2)  # [K, H]
    cols = masks.any(dim=1)  # [K, W]
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = height - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = width - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.int64)
    empty = ~rows.any(dim=1)
    boxes[empty] = 0
    return boxes.reshape(k, 4)


def box_nms(boxes: NDArray[np.int64], scores: NDArray[np.float64], iou_thresh: float) -> list[int]:
    """Greedy NMS: indices kept, best first; ties in score keep the lower index first.

    Each kept box suppresses, in one vectorised step, every later box whose IoU with
    it is above ``iou_thresh``; areas are (x1 − x0) · (y1 − y0) as torchvision's.
    """
    order = np.argsort(-scores, kind="stable")
    if iou_thresh >= 1.0:
        return [int(i) for i in order]
    b = boxes[order].astype(np.float64)
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(int(order[i]))
        rest = slice(i + 1, None)
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        alive[rest] &= ~(iou > iou_thresh)
    return keep


def remove_small_regions(mask: BoolMask, min_area: int) -> tuple[BoolMask, bool]:
    """Fill holes, then drop islands, smaller than ``min_area`` pixels (8-connectivity).

    Returns the new mask and whether it changed. When every island is small, the
    largest is kept rather than emptying the mask.
    """
    changed = False
    # holes: components of the background; the ones under min_area become foreground
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
    if small.size:
        mask = mask | np.isin(labels, small)
        changed = True
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(sizes < min_area) + 1
    if small.size:
        keep = np.setdiff1d(np.arange(1, n), small)
        if keep.size == 0:
            keep = np.array([int(np.argmax(sizes)) + 1])
        mask = np.isin(labels, keep)
        changed = changed or keep.size < n - 1
    return mask, changed


def proposals(
    model: EfficientSam,
    crop: Crop,
    width: int,
    height: int,
    params: EverythingParams,
    *,
    memory_budget_bytes: int,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[Proposal]:
    """Every candidate of one crop that passes the thresholds, in candidate order.

    Boxes, points and masks are in the full image's pixels.
    """
    x0, y0, x1, y1 = crop.box
    crop_w, crop_h = x1 - x0, y1 - y0
    grid = point_grid(params.points_per_side, crop_w, crop_h)
    img_size = model.config.img_size
    scale = np.array([img_size / crop_w, img_size / crop_h])
    chunk = _chunk_size(crop_h, crop_w, memory_budget_bytes)
    kept: list[Proposal] = []
    for start in range(0, len(grid), params.points_per_batch):
        if cancelled():
            raise TimeoutError("segment everything was cancelled")
        batch = grid[start : start + params.points_per_batch]
        points = torch.from_numpy((batch * scale).astype(np.float32))[:, None, :]
        labels = torch.ones(len(batch), 1)
        with torch.inference_mode():
            low_res, iou = model.decode(crop.embedding, points, labels, multimask=True)
        low_res = low_res.flatten(0, 1)  # [B * 3, 256, 256], candidate order, on the model's device
        iou = iou.cpu().flatten().double()
        (survivors,) = torch.nonzero(iou > params.pred_iou_thresh, as_tuple=True)
        for first in range(0, len(survivors), chunk):
            index = survivors[first : first + chunk]
            kept += _upsampled(
                low_res[index.to(low_res.device)],
                iou[index],
                batch[index.numpy() // 3],
                crop,
                width,
                height,
                params,
                memory_budget_bytes,
            )
    return kept


def _chunk_size(height: int, width: int, memory_budget_bytes: int) -> int:
    return max(1, memory_budget_bytes // (height * width * _BYTES_PER_CANDIDATE_PIXEL))


def _upsampled(
    low_res: torch.Tensor,
    iou: torch.Tensor,
    points: NDArray[np.float64],
    crop: Crop,
    width: int,
    height: int,
    params: EverythingParams,
    memory_budget_bytes: int,
) -> list[Proposal]:
    """Full-size logits for one chunk of candidates → the stable, non-empty ones that no
    inner crop edge cuts, placed in the full image as RLE. The masks stay on the model's
    device: only their boxes, areas, scores and run lengths leave it."""
    x0, y0, x1, y1 = crop.box
    with torch.inference_mode():
        logits = upsample_logits(low_res, y1 - y0, x1 - x0)
        stability = stability_scores(logits, params.stability_score_offset).cpu()
        masks = logits > 0
        del logits
        areas = masks.sum(dim=(-2, -1), dtype=torch.int64).cpu()
        good = (stability >= params.stability_score_thresh) & (areas > 0)
        (rows,) = torch.nonzero(good, as_tuple=True)
        masks = masks[rows.to(masks.device)]
        boxes = mask_boxes(masks).cpu().numpy() + np.array([x0, y0, x0, y0])
        if crop.box != (0, 0, width, height):
            (inside,) = np.nonzero(~near_crop_edge(boxes, crop.box, width, height))
            masks = masks[torch.from_numpy(inside).to(masks.device)]
            boxes, rows = boxes[inside], rows[torch.from_numpy(inside)]
        rles = _rles(masks, crop.box, width, height, memory_budget_bytes)
    crop_area = (x1 - x0) * (y1 - y0)
    return [
        Proposal(
            rle=rle,
            area=int(areas[row]),
            box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])),
            predicted_iou=float(iou[row]),
            stability_score=float(stability[row]),
            point=(float(points[row][0]) + x0, float(points[row][1]) + y0),
            crop_area=crop_area,
        )
        for rle, row, box in zip(rles, rows.tolist(), boxes, strict=True)
    ]


def _rles(
    masks: torch.Tensor, box: Box, width: int, height: int, memory_budget_bytes: int
) -> list[CocoRle]:
    """COCO RLE of ``[K, crop_h, crop_w]`` masks placed at ``box`` in the full image: on a
    CPU by pycocotools (5 ms per 1080p mask, against 16 ms counting runs with torch), on a
    GPU by counting runs there (only the counts leave it, not 2 MB per mask)."""
    if masks.device.type == "cpu":
        return rles_on_host(masks, box, width, height)
    return rles_counted(masks, box, width, height, memory_budget_bytes)


def rles_on_host(masks: torch.Tensor, box: Box, width: int, height: int) -> list[CocoRle]:
    x0, y0, x1, y1 = box
    rles = []
    for mask in masks.cpu().numpy():
        if box != (0, 0, width, height):
            full = np.zeros((height, width), dtype=bool)
            full[y0:y1, x0:x1] = mask
            mask = full
        rles.append(encode_rle(mask))
    return rles


def rles_counted(
    masks: torch.Tensor, box: Box, width: int, height: int, memory_budget_bytes: int
) -> list[CocoRle]:
    """Run lengths counted on the masks' device, in full-image groups that fit the budget
    (the placed mask, its padded copy and the run starts: 3 bytes per pixel)."""
    x0, y0, x1, y1 = box
    group = max(1, memory_budget_bytes // (3 * width * height))
    rles: list[CocoRle] = []
    for first in range(0, len(masks), group):
        part = masks[first : first + group]
        if box != (0, 0, width, height):
            full = torch.zeros((len(part), height, width), dtype=torch.bool, device=part.device)
            full[:, y0:y1, x0:x1] = part
            part = full
        lengths, counts = (t.cpu().numpy() for t in run_lengths(part))
        ends = np.cumsum(lengths)
        rles.extend(
            compress_rle(counts[end - n : end], height, width)
            for n, end in zip(lengths, ends, strict=True)
        )
    return rles


def _boxes(proposals: Sequence[Proposal]) -> NDArray[np.int64]:
    return np.array([p.box for p in proposals], dtype=np.int64).reshape(-1, 4)


def _ranked(candidates: Sequence[Proposal], params: EverythingParams) -> list[Proposal]:
    """NMS in ranking order (ties: candidate order)."""
    scores = np.array([c.score(params.rank_by) for c in candidates], dtype=np.float64)
    return [candidates[i] for i in box_nms(_boxes(candidates), scores, params.box_nms_thresh)]


def select(per_crop: Sequence[Sequence[Proposal]], params: EverythingParams) -> list[Proposal]:
    """NMS within each crop, across crops (smaller crop first), clean-up, top ``max_masks``."""
    ranked = [p for found in per_crop for p in _ranked(found, params)]
    if len(per_crop) > 1 and ranked:
        smaller_first = np.array([1.0 / p.crop_area for p in ranked])
        keep = box_nms(_boxes(ranked), smaller_first, params.box_nms_thresh)
        survivors = [ranked[i] for i in sorted(keep)]
        ranked = sorted(survivors, key=lambda p: -p.score(params.rank_by))
    if params.min_mask_region_area > 0:
        ranked = _clean_small_regions(ranked, params)
    return ranked[: params.max_masks]


def _clean_small_regions(ranked: list[Proposal], params: EverythingParams) -> list[Proposal]:
    cleaned: list[Proposal] = []
    unchanged: list[float] = []
    for proposal in ranked:
        mask, changed = remove_small_regions(proposal.mask, params.min_mask_region_area)
        area = int(mask.sum())
        if area == 0:
            continue
        box = mask_boxes(torch.from_numpy(mask)[None])[0].tolist()
        cleaned.append(
            Proposal(
                rle=encode_rle(mask) if changed else proposal.rle,
                area=area,
                box=(box[0], box[1], box[2], box[3]),
                predicted_iou=proposal.predicted_iou,
                stability_score=proposal.stability_score,
                point=proposal.point,
                crop_area=proposal.crop_area,
            )
        )
        unchanged.append(0.0 if changed else 1.0)
    # prefer unchanged masks; among equals the ranking order (a stable sort keeps it)
    keep = box_nms(_boxes(cleaned), np.array(unchanged), params.box_nms_thresh)
    return [cleaned[i] for i in sorted(keep)]


def segment_everything(
    model: EfficientSam,
    crops: Sequence[Crop],
    width: int,
    height: int,
    params: EverythingParams,
    *,
    memory_budget_bytes: int = 256 << 20,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[Proposal]:
    """The whole pipeline for a ``width``×``height`` image: ``crops`` = its embedding as
    ``Crop((0, 0, width, height), embedding)``, then those of ``crop_boxes(...)[1:]``."""
    per_crop = [
        proposals(
            model,
            crop,
            width,
            height,
            params,
            memory_budget_bytes=memory_budget_bytes,
            cancelled=cancelled,
        )
        for crop in crops
    ]
    return select(per_crop, params)
