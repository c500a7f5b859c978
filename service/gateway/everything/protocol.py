"""Schemas of ``POST /segment/everything``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.gateway.segment.protocol import ImageRef, Polygon, RleMask


class EverythingRequest(ImageRef):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image_id": "5e3c0a1f0b2d4f7e9c8a6b5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
                    "points_per_side": 32,
                    "pred_iou_thresh": 0.88,
                    "stability_score_thresh": 0.95,
                    "box_nms_thresh": 0.7,
                    "min_mask_region_area": 100,
                    "mask_format": "rle",
                }
            ]
        },
    )

    points_per_side: int = Field(
        default=32, ge=1, le=64, description="grid of n × n foreground points over the image"
    )
    points_per_batch: int = Field(
        default=64, ge=1, le=256, description="points per decoder call (memory against speed)"
    )
    pred_iou_thresh: float = Field(
        default=0.88, ge=-1, le=1, description="keep candidates whose predicted IoU is above this"
    )
    stability_score_thresh: float = Field(
        default=0.95, ge=0, le=1, description="keep candidates whose stability is at least this"
    )
    stability_score_offset: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="stability = area(logits > offset) / area(logits > −offset)",
    )
    box_nms_thresh: float = Field(
        default=0.7, ge=0, le=1, description="box IoU above which NMS drops a mask; 1.0: no NMS"
    )
    min_mask_region_area: int = Field(
        default=0,
        ge=0,
        le=100_000_000,
        description="> 0: fill holes and remove islands smaller than this many pixels, "
        "then NMS again preferring unchanged masks",
    )
    rank_by: Literal["predicted_iou", "iou_stability_mean"] = Field(
        default="predicted_iou",
        description="order (and NMS priority): predicted IoU, or the mean of predicted IoU "
        "and stability (the paper's proposal ranking)",
    )
    max_masks: int = Field(default=1000, ge=1, le=10_000)
    crop_n_layers: int = Field(
        default=0,
        ge=0,
        le=2,
        description="1-2: add SAM's overlapping crops (4, then 16 more), each with its own "
        "embedding, for small objects; needs `image` (the crops are cut from its pixels)",
    )
    mask_format: Literal["rle", "png", "polygons", "none"] = "rle"


class EverythingMaskOut(BaseModel):
    mask: RleMask | str | list[Polygon] | None = Field(
        default=None,
        description="rle: {size, counts}; png: base64 PNG; polygons: list; none: omitted",
    )
    area: int
    bbox: list[float] = Field(description="[x, y, w, h], as /segment")
    predicted_iou: float
    stability_score: float
    point: list[float] = Field(description="the grid point [x, y] (pixels) that produced it")


class EverythingResponse(BaseModel):
    image_id: str
    model: str
    width: int
    height: int
    cached: bool
    masks: list[EverythingMaskOut] = Field(description="in ranking order, best first")
