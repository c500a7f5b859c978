"""Zero-shot edge detection with a promptable segmenter (no HTTP here).

The Segment Anything paper's procedure (§7.1, and its appendix on BSDS500), step by step:

1. **grid**: ``points_per_side``² foreground points (16² by default), placed as segment
   everything places them (:func:`service.core.everything.point_grid`), decoded in
   batches of ``points_per_batch``;
2. **every candidate**: all three masks of every point (768 for 16²), no predicted-IoU
   or stability filter; only empty masks are dropped;
3. **NMS**: greedy box NMS at ``box_nms_thresh`` by predicted IoU, as segment everything
   (boxes of the full-size masks, logits > 0), so that repeated masks count once;
4. **Sobel** on each remaining mask's *unthresholded* probability map: the sigmoid of
   its logits upsampled (bicubic) to the image, 3×3 Sobel, gradient magnitude;
5. **only at the mask's boundary**: a response is kept where it lies within
   ``boundary_px`` pixels of the mask's edge (the morphological gradient of
   logits > 0: dilation ≠ erosion in a (2·``boundary_px`` + 1)² window; the image's own
   border is no edge), elsewhere set to zero; holes' edges are edges too;
6. **pixel-wise maximum** over all masks, **linearly normalised** to [0, 1];
7. **edge NMS** (``edge_nms``): a pixel stays only where it is a maximum across the
   edge, along the gradient direction of the mask that gave it its strength (Canny's
   thinning; the neighbours at ±1 pixel sampled bilinearly; ties go to one side).

Crops (``crop_n_layers`` of the request) work as in segment everything: each crop has
its own grid and embedding, masks cut by an inner crop edge are dropped, NMS runs within
each crop and then across crops preferring the smaller crop.

Upsampling runs in chunks under a memory budget (``ESAM_EVERYTHING_MEMORY_MB``), twice
for the masks NMS keeps (once for the boxes, once for the edges). Between the steps only
each candidate's point, mask token, predicted IoU and box are kept, and the points of the
masks NMS kept are decoded again (the decoder is a function of its prompt): a job's
memory does not grow with its grid (64² points on 21 crops are 258,048 candidates).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from service.core.everything import Crop, box_nms, mask_boxes, near_crop_edge, point_grid
from service.model import ModelConfig
from service.model.masks import upsample_logits

#: float32 logits, probability, two gradients, magnitude, boundary temporaries per pixel
_BYTES_PER_EDGE_PIXEL = 4 * 8
#: the timed steps of ``edge_map`` (``EdgeMap.seconds``), in order; "thin" with edge NMS
EDGE_STEPS = ("decode", "nms", "edges", "thin")
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


class PromptDecoder(Protocol):
    """What the procedure needs of a model: its config and its prompt decoder
    (:meth:`service.model.EfficientSam.decode`)."""

    config: ModelConfig

    def decode(
        self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class EdgeParams:
    """The procedure's parameters (the paper's defaults); out-of-range values raise
    ``ValueError`` naming the field (the HTTP schema states the same ranges)."""

    points_per_side: int = 16
    points_per_batch: int = 64
    box_nms_thresh: float = 0.7
    boundary_px: int = 1
    edge_nms: bool = True

    def __post_init__(self) -> None:
        ranges = (("points_per_side", 1, 64), ("points_per_batch", 1, 256), ("boundary_px", 1, 16))
        for name, low, high in ranges:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}")
        nms = self.box_nms_thresh
        if isinstance(nms, bool) or not isinstance(nms, int | float) or not 0 <= nms <= 1:
            raise ValueError("box_nms_thresh must be a number from 0 to 1")
        if not isinstance(self.edge_nms, bool):
            raise ValueError("edge_nms must be true or false")


@dataclass(frozen=True)
class EdgeMap:
    strength: NDArray[np.float32]  # [H, W] in [0, 1]
    candidates: int  # non-empty candidate masks of the grid(s)
    masks: int  # after NMS: the masks whose edges make the map
    seconds: dict[str, float] = field(default_factory=dict)  # per step


@dataclass
class _Candidates:
    """One crop's non-empty candidates: which point and mask token each is, its predicted
    IoU and its full-image box (no pixels: the memory of a job does not grow with its grid)."""

    crop: Crop
    prompts: torch.Tensor  # [n², 1, 2] the crop's grid in the model frame
    source: NDArray[np.int64]  # [K] point index × 3 + mask token
    iou: NDArray[np.float64]
    boxes: NDArray[np.int64]  # [K, 4] x0, y0, x1, y1 inclusive, in the full image


def _chunk(height: int, width: int, budget: int) -> int:
    return max(1, budget // (height * width * _BYTES_PER_EDGE_PIXEL))


def _candidates(
    model: PromptDecoder,
    crop: Crop,
    width: int,
    height: int,
    params: EdgeParams,
    budget: int,
    cancelled: Callable[[], bool],
) -> _Candidates:
    x0, y0, x1, y1 = crop.box
    crop_w, crop_h = x1 - x0, y1 - y0
    grid = point_grid(params.points_per_side, crop_w, crop_h)
    img_size = model.config.img_size
    scale = np.array([img_size / crop_w, img_size / crop_h])
    prompts = torch.from_numpy((grid * scale).astype(np.float32))[:, None, :]
    chunk = _chunk(crop_h, crop_w, budget)
    kept_source, kept_iou, kept_boxes = [], [], []
    for start in range(0, len(grid), params.points_per_batch):
        if cancelled():
            raise TimeoutError("edge detection was cancelled")
        points = prompts[start : start + params.points_per_batch]
        with torch.inference_mode():
            low_res, iou = model.decode(crop.embedding, points, torch.ones(len(points), 1), True)
            low_res = low_res.flatten(0, 1)  # [B * 3, 256, 256]: every candidate
            iou = iou.flatten()
            for first in range(0, len(low_res), chunk):
                masks = upsample_logits(low_res[first : first + chunk], crop_h, crop_w) > 0
                boxes = mask_boxes(masks).cpu().numpy()
                present = masks.flatten(1).any(dim=1).cpu().numpy()
                del masks
                (rows,) = np.nonzero(present)
                kept_source.append(3 * start + first + rows)
                kept_iou.append(iou[first : first + chunk].double().cpu().numpy()[present])
                kept_boxes.append(boxes[present] + np.array([x0, y0, x0, y0]))
    boxes = np.concatenate(kept_boxes).astype(np.int64)
    iou = np.concatenate(kept_iou)
    source = np.concatenate(kept_source).astype(np.int64)
    if crop.box != (0, 0, width, height):  # a mask cut by an inner crop edge is no object
        whole = ~near_crop_edge(boxes, crop.box, width, height)
        boxes, iou, source = boxes[whole], iou[whole], source[whole]
    return _Candidates(crop, prompts, source, iou, boxes)


def _kept_logits(
    model: PromptDecoder, part: _Candidates, indices: Sequence[int], batch: int
) -> Iterator[torch.Tensor]:
    """The low-resolution logits of the candidates NMS kept, decoded again (the decoder is
    a function of its prompt) ``batch`` points at a time: ``[k, 256, 256]`` per batch."""
    sources = np.sort(part.source[list(indices)])
    points = np.unique(sources // 3)
    for start in range(0, len(points), batch):
        chosen = points[start : start + batch]
        wanted = sources[np.isin(sources // 3, chosen)]
        with torch.inference_mode():
            low_res, _ = model.decode(
                part.crop.embedding,
                part.prompts[torch.from_numpy(chosen)],
                torch.ones(len(chosen), 1),
                True,
            )
        rows = np.searchsorted(chosen, wanted // 3)
        yield low_res[torch.from_numpy(rows), torch.from_numpy(wanted % 3)]


def _survivors(found: Sequence[_Candidates], params: EdgeParams) -> list[tuple[int, int]]:
    """(crop index, candidate index) of the masks NMS keeps: within each crop by predicted
    IoU, then across crops preferring the smaller crop (as segment everything)."""
    kept = []
    for c, part in enumerate(found):
        kept += [(c, int(k)) for k in box_nms(part.boxes, part.iou, params.box_nms_thresh)]
    if len(found) > 1 and kept:
        boxes = np.array([found[c].boxes[k] for c, k in kept], dtype=np.int64)
        areas = [_area(found[c].crop) for c, _ in kept]
        smaller_first = 1.0 / np.array(areas, dtype=np.float64)
        kept = [kept[i] for i in sorted(box_nms(boxes, smaller_first, params.box_nms_thresh))]
    return kept


def _area(crop: Crop) -> int:
    x0, y0, x1, y1 = crop.box
    return (x1 - x0) * (y1 - y0)


def boundary_band(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """``[K, H, W]`` bool → pixels within ``radius`` of where the mask changes (dilation ≠
    erosion over a (2r + 1)² window; outside the image counts as neither, so the image's
    border is not a boundary)."""
    m = masks[:, None].float()
    size = 2 * radius + 1
    dilated = F.max_pool2d(m, size, stride=1, padding=radius)
    eroded = -F.max_pool2d(-m, size, stride=1, padding=radius)
    band: torch.Tensor = (dilated != eroded)[:, 0]
    return band


def sobel(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[K, H, W]`` → x and y gradients (3×3 Sobel, borders replicated)."""
    kx = _SOBEL_X.to(maps.device, maps.dtype)[None, None]
    ky = kx.transpose(2, 3)
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx)[:, 0], F.conv2d(padded, ky)[:, 0]


def thin(strength: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Edge NMS: keep a pixel where it is at least its neighbour one pixel back along the
    gradient and above the one forward (bilinear samples; outside the image is 0)."""
    height, width = strength.shape
    norm = torch.hypot(gx, gy)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    nx, ny = gx / safe, gy / safe
    ys, xs = torch.meshgrid(
        torch.arange(height, device=strength.device, dtype=strength.dtype),
        torch.arange(width, device=strength.device, dtype=strength.dtype),
        indexing="ij",
    )

    def at(sign: float) -> torch.Tensor:
        gx_ = (xs + sign * nx) / max(width - 1, 1) * 2 - 1
        gy_ = (ys + sign * ny) / max(height - 1, 1) * 2 - 1
        grid = torch.stack([gx_, gy_], dim=-1)[None]
        sampled = F.grid_sample(
            strength[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return sampled[0, 0]

    keep = (strength > at(1.0)) & (strength >= at(-1.0)) & (norm > 0)
    return torch.where(keep, strength, torch.zeros_like(strength))


class _Maps:
    """The running pixel-wise maximum of the masks' boundary responses, with the gradient
    of the mask that gave each pixel its value (for edge NMS); on the model's device."""

    def __init__(self, height: int, width: int) -> None:
        self.strength = torch.zeros(height, width)
        self.gx = torch.zeros(height, width)
        self.gy = torch.zeros(height, width)

    def add(self, logits: torch.Tensor, region: tuple[slice, slice], boundary_px: int) -> None:
        """``[K, h, w]`` full-size logits of masks over ``region`` of the image."""
        if self.strength.device != logits.device:
            self.strength, self.gx, self.gy = (
                t.to(logits.device) for t in (self.strength, self.gx, self.gy)
            )
        gx, gy = sobel(torch.sigmoid(logits))
        response = torch.hypot(gx, gy) * boundary_band(logits > 0, boundary_px)
        best, winner = response.max(dim=0)
        stronger = best > self.strength[region]
        self.strength[region] = torch.where(stronger, best, self.strength[region])
        self.gx[region] = torch.where(stronger, gx.gather(0, winner[None])[0], self.gx[region])
        self.gy[region] = torch.where(stronger, gy.gather(0, winner[None])[0], self.gy[region])


def edge_map(
    model: PromptDecoder,
    crops: Sequence[Crop],
    width: int,
    height: int,
    params: EdgeParams,
    *,
    memory_budget_bytes: int = 256 << 20,
    cancelled: Callable[[], bool] = lambda: False,
) -> EdgeMap:
    """The edge strength of a ``width``×``height`` image: ``crops`` = its embedding as
    ``Crop((0, 0, width, height), embedding)``, then any crops' (see the module's steps)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    found = [
        _candidates(model, crop, width, height, params, memory_budget_bytes, cancelled)
        for crop in crops
    ]
    seconds["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    survivors = _survivors(found, params)
    seconds["nms"] = time.perf_counter() - start
    start = time.perf_counter()
    maps = _Maps(height, width)
    for c, part in enumerate(found):
        indices = [k for crop_index, k in survivors if crop_index == c]
        x0, y0, x1, y1 = part.crop.box
        chunk = _chunk(y1 - y0, x1 - x0, memory_budget_bytes)
        for low_res in _kept_logits(model, part, indices, params.points_per_batch):
            for first in range(0, len(low_res), chunk):
                if cancelled():
                    raise TimeoutError("edge detection was cancelled")
                with torch.inference_mode():
                    logits = upsample_logits(low_res[first : first + chunk], y1 - y0, x1 - x0)
                    maps.add(logits, (slice(y0, y1), slice(x0, x1)), params.boundary_px)
    strength, gx_best, gy_best = maps.strength, maps.gx, maps.gy
    peak = float(strength.max())
    if peak > 0 and math.isfinite(peak):
        strength = strength / peak
    seconds["edges"] = time.perf_counter() - start
    if params.edge_nms:
        start = time.perf_counter()
        strength = thin(strength, gx_best, gy_best)
        seconds["thin"] = time.perf_counter() - start
    return EdgeMap(
        strength=strength.cpu().numpy().astype(np.float32),
        candidates=sum(len(part.iou) for part in found),
        masks=len(survivors),
        seconds=seconds,
    )
