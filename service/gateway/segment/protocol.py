"""Schemas of ``POST /segment``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from service.gateway.examples import EXAMPLE_IMAGE_BASE64, EXAMPLE_IMAGE_ID
from service.gateway.mask_formats import MaskFormat
from service.gateway.protocol_types import (
    BY_ID,
    ONE_IMAGE,
    WITH_IMAGE,
    ById,
    Coordinate,
    Polygon,
    RleMask,
    WithImage,
    add_to_schema,
    integral,
    no_default,
    reject_null,
)
from service.model.prompts import MAX_POINTS, Prompt, check_prompt_shape

Point = Annotated[list[Coordinate], Field(min_length=2, max_length=2)]
Label = Annotated[int, Field(ge=0, le=1), BeforeValidator(integral)]


class PromptIn(BaseModel):
    """Points with labels, a box, or both; pixel coordinates of the original image.

    At most 6 points per prompt, a box counting as 2.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    points: list[Point] = Field(
        default_factory=list,
        max_length=MAX_POINTS,
        description="[[x, y], ...] pixels, within the image",
    )
    labels: list[Label] = Field(
        default_factory=list,
        max_length=MAX_POINTS,
        description="1 foreground, 0 background; one per point",
    )
    box: SkipJsonSchema[None] | Annotated[list[Coordinate], Field(min_length=4, max_length=4)] = (
        Field(
            default=None,
            description="[x0, y0, x1, y1] pixels, x0 < x1 and y0 < y1",
            json_schema_extra=no_default,
        )
    )

    _not_null = field_validator("points", "labels", "box", mode="before")(reject_null)
    # no box: at least one point; a box: at most 4 points (if/then/else, which generated
    # clients read as one plain class)
    __get_pydantic_json_schema__ = add_to_schema(
        {
            "if": {"not": {"required": ["box"]}},
            "then": {"required": ["points"], "properties": {"points": {"minItems": 1}}},
            "else": {"properties": {"points": {"maxItems": MAX_POINTS - 2}}},
        }
    )


class SegmentOptions(BaseModel):
    """What ``/segment`` asks of an image, whichever way it names the image."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompts: list[PromptIn] = Field(
        min_length=1, description="at most ESAM_MAX_PROMPTS (this document's maxItems)"
    )
    multimask: bool | Literal["auto"] = Field(
        default=True,
        description=(
            'true: 3 candidates per prompt; false: 1 (the single-mask output); "auto": '
            "SAM's rule for a click, per prompt: 3 for one positive point alone (ambiguous: "
            "whole, part or subpart), 1 for more points or a box (what labeling platforms "
            "want; with best_only, one mask per prompt either way)"
        ),
    )
    best_only: bool = Field(
        default=False,
        description=(
            "with multimask: only the best of the three candidates by predicted IoU (what "
            "SAM's demos show after one click), so no mask is upsampled or encoded that "
            "nobody reads; ignored where a prompt gets one candidate anyway"
        ),
    )
    mask_format: MaskFormat = "rle"
    return_logits: bool = False

    @model_validator(mode="after")
    def _prompts_have_a_shape(self) -> SegmentOptions:
        """422 ``invalid_prompt`` before any image is looked up or decoded."""
        for i, p in enumerate(self.prompts):
            check_prompt_shape(Prompt(p.points, p.labels, p.box), f"prompts[{i}]")
        return self


class SegmentByIdRequest(SegmentOptions, ById):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "image_id": EXAMPLE_IMAGE_ID,
                    "prompts": [
                        {"points": [[32, 24]], "labels": [1]},
                        {"box": [14, 6, 50, 42]},
                    ],
                    "multimask": True,
                    "mask_format": "rle",
                }
            ]
        },
    )


class SegmentWithImageRequest(SegmentOptions, WithImage):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "image": EXAMPLE_IMAGE_BASE64,
                    "prompts": [{"points": [[32, 24]], "labels": [1]}],
                    "multimask": False,
                }
            ]
        },
    )


#: ``/segment``'s body: the image by id or inline, exactly one (``oneOf`` in the schema).
SegmentRequest = Annotated[
    Annotated[SegmentByIdRequest, Tag(BY_ID)] | Annotated[SegmentWithImageRequest, Tag(WITH_IMAGE)],
    ONE_IMAGE,
]


class Logits(BaseModel):
    shape: list[int]
    dtype: Literal["float32"] = "float32"
    data: str = Field(description="base64 of little-endian float32 bytes")


class CandidateOut(BaseModel):
    score: float = Field(description="predicted IoU")
    area: int
    bbox: list[float] = Field(description="[x, y, w, h]")
    mask: RleMask | str | list[Polygon] | None = Field(
        default=None,
        description="rle: {size, counts}; png: base64 PNG; polygons: list; none: omitted",
    )
    logits: Logits | None = Field(default=None, description="only with return_logits")


class PromptResult(BaseModel):
    candidates: list[CandidateOut] = Field(description="highest score first")


class SegmentResponse(BaseModel):
    image_id: str
    model: str
    width: int
    height: int
    cached: bool
    results: list[PromptResult] = Field(description="one per prompt, in request order")
