"""Schemas of ``POST /edges``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Tag, field_validator
from pydantic.json_schema import SkipJsonSchema

from service.core.edges import EdgeParams
from service.gateway.examples import EXAMPLE_IMAGE_BASE64, EXAMPLE_IMAGE_ID
from service.gateway.protocol_types import (
    BY_ID,
    ONE_IMAGE,
    WITH_IMAGE,
    ById,
    Integer,
    WithImage,
    integral,
    reject_null,
)

#: the paper's grid for edge detection: 16² points, 768 masks before NMS; a deployment
#: whose ESAM_MAX_EVERYTHING_PROMPTS is lower defaults to the densest grid it allows
DEFAULT_POINTS_PER_SIDE = EdgeParams().points_per_side


class EdgeOptions(BaseModel):
    """The procedure's parameters (the paper's defaults), whichever way the image comes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    points_per_side: (
        SkipJsonSchema[None] | Annotated[int, Field(ge=1, le=64), BeforeValidator(integral)]
    ) = Field(
        default=None,
        description="grid of n × n foreground points over the image (per crop), every "
        "point's three candidates used; default 16, or the densest grid this deployment "
        "allows with the crop layers asked for",
        json_schema_extra={"default": DEFAULT_POINTS_PER_SIDE},
    )
    points_per_batch: Integer = Field(
        default=64, ge=1, le=256, description="points per decoder call (memory against speed)"
    )
    box_nms_thresh: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="box IoU above which NMS drops a mask as redundant (by predicted IoU); "
        "1.0: no NMS",
    )
    boundary_px: Integer = Field(
        default=1,
        ge=1,
        le=16,
        description="a mask's Sobel response is kept only within this many pixels of its "
        "boundary (where logits > 0 changes)",
    )
    edge_nms: bool = Field(
        default=True,
        description="thin the edges to one pixel: keep a pixel only where it is a maximum "
        "across the edge (along the gradient)",
    )

    _points_per_side_not_null = field_validator("points_per_side", mode="before")(reject_null)


class EdgesByIdRequest(EdgeOptions, ById):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image_id": EXAMPLE_IMAGE_ID}]})


class EdgesWithImageRequest(EdgeOptions, WithImage):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"image": EXAMPLE_IMAGE_BASE64, "points_per_side": 4}]}
    )

    crop_n_layers: Integer = Field(
        default=0,
        ge=0,
        le=2,
        description="1-2: add SAM's overlapping crops (4, then 16 more), each with its own "
        "embedding and grid, as /segment/everything; only with `image`",
    )


#: ``/edges``'s body: the image by id or inline, exactly one.
EdgesRequest = Annotated[
    Annotated[EdgesByIdRequest, Tag(BY_ID)] | Annotated[EdgesWithImageRequest, Tag(WITH_IMAGE)],
    ONE_IMAGE,
]
