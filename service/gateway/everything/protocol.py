"""Schemas of ``POST /segment/everything``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Tag, field_validator
from pydantic.json_schema import SkipJsonSchema

from service.core.everything import EverythingParams
from service.gateway.examples import EXAMPLE_IMAGE_BASE64, EXAMPLE_IMAGE_ID
from service.gateway.mask_formats import MaskFormat
from service.gateway.protocol_types import (
    BY_ID,
    ONE_IMAGE,
    WITH_IMAGE,
    ById,
    Integer,
    Polygon,
    RleMask,
    WithImage,
    integral,
    reject_null,
)

#: SAM's grid; a deployment whose ESAM_MAX_EVERYTHING_PROMPTS is lower defaults to the
#: densest grid it allows (its OpenAPI document says which)
DEFAULT_POINTS_PER_SIDE = EverythingParams().points_per_side


class EverythingOptions(BaseModel):
    """The job's parameters, whichever way the request names the image."""

    model_config = ConfigDict(extra="forbid", strict=True)

    points_per_side: (
        SkipJsonSchema[None] | Annotated[int, Field(ge=1, le=64), BeforeValidator(integral)]
    ) = Field(
        default=None,
        description="grid of n × n foreground points over the image (per crop); default 32, "
        "or the densest grid this deployment allows with the crop layers asked for",
        json_schema_extra={"default": DEFAULT_POINTS_PER_SIDE},
    )
    points_per_batch: Integer = Field(
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
    min_mask_region_area: Integer = Field(
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
    max_masks: Integer = Field(default=1000, ge=1, le=10_000)
    mask_format: MaskFormat = "rle"

    _points_per_side_not_null = field_validator("points_per_side", mode="before")(reject_null)


class EverythingByIdRequest(EverythingOptions, ById):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "image_id": EXAMPLE_IMAGE_ID,
                    "points_per_side": 8,
                    "pred_iou_thresh": 0.88,
                    "stability_score_thresh": 0.95,
                    "box_nms_thresh": 0.7,
                    "min_mask_region_area": 100,
                    "mask_format": "rle",
                }
            ]
        },
    )


class EverythingWithImageRequest(EverythingOptions, WithImage):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"image": EXAMPLE_IMAGE_BASE64, "points_per_side": 3, "crop_n_layers": 1}]
        },
    )

    crop_n_layers: Integer = Field(
        default=0,
        ge=0,
        le=2,
        description="1-2: add SAM's overlapping crops (4, then 16 more), each with its own "
        "embedding, for small objects; only with `image` (the crops are cut from its pixels)",
    )


#: ``/segment/everything``'s body: the image by id or inline, exactly one.
EverythingRequest = Annotated[
    Annotated[EverythingByIdRequest, Tag(BY_ID)]
    | Annotated[EverythingWithImageRequest, Tag(WITH_IMAGE)],
    ONE_IMAGE,
]


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
