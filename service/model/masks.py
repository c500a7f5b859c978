"""Mask post-processing: upsampling as the reference, and the wire encodings."""

from __future__ import annotations

import io
from typing import TypedDict

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from pycocotools import mask as coco_mask

BoolMask = NDArray[np.bool_]


class CocoRle(TypedDict):
    size: list[int]
    counts: str


class Polygon(TypedDict):
    exterior: list[list[int]]
    holes: list[list[list[int]]]


def upsample_masks(low_res_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[..., 256, 256]`` logits → boolean masks ``[..., height, width]``.

    Bicubic upsampling straight to the original size, then ``>= 0``.
    """
    lead = low_res_logits.shape[:-2]
    flat = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:]).float()
    up = F.interpolate(flat, size=(height, width), mode="bicubic", align_corners=False)
    return (up >= 0).reshape(*lead, height, width)


def encode_rle(mask: BoolMask) -> CocoRle:
    """COCO compressed RLE (column-major), readable by ``pycocotools.mask.decode``."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_area_bbox(rle: CocoRle) -> tuple[int, list[float]]:
    """Area in pixels and ``[x, y, w, h]`` bounding box (zeros for an empty mask)."""
    raw = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    area = int(coco_mask.area(raw))
    bbox = [float(v) for v in coco_mask.toBbox(raw)]
    return area, bbox


def encode_png(mask: BoolMask) -> bytes:
    """One-bit PNG of the mask (white = inside)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask)).convert("1").save(
        buffer, format="PNG", optimize=True
    )
    return buffer.getvalue()


def mask_to_polygons(mask: BoolMask, min_points: int = 3) -> list[Polygon]:
    """Outer boundaries with their holes, in pixel coordinates.

    Each polygon is ``{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}``;
    rings are traced through the centres of the boundary pixels (OpenCV
    ``RETR_CCOMP``). Rings with fewer than ``min_points`` vertices are dropped.
    """
    contours, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    links = hierarchy[0]  # [next, previous, first_child, parent]
    polygons: list[Polygon] = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1 or len(contour) < min_points:
            continue  # holes are collected under their parent
        holes: list[list[list[int]]] = []
        child = int(links[i][2])
        while child != -1:
            if len(contours[child]) >= min_points:
                holes.append(contours[child].reshape(-1, 2).tolist())
            child = int(links[child][0])
        polygons.append({"exterior": contour.reshape(-1, 2).tolist(), "holes": holes})
    return polygons
