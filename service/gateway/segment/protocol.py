"""Schemas of ``POST /segment``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"


class PromptIn(BaseModel):
    """Points with labels, a box, or both; pixel coordinates of the original image."""

    model_config = ConfigDict(extra="forbid")

    points: list[list[float]] = Field(
        default_factory=list, description="[[x, y], ...]", examples=[[[580, 350]]]
    )
    labels: list[StrictInt] = Field(
        default_factory=list, description="1 foreground, 0 background; one per point"
    )
    box: list[float] | None = Field(default=None, description="[x0, y0, x1, y1]")


class ImageRef(BaseModel):
    """The image a request is about: its ``image_id`` or the image itself, exactly one."""

    model_config = ConfigDict(extra="forbid")

    image_id: str | None = Field(
        default=None, pattern=IMAGE_ID_PATTERN, description="From /embed; or send `image`."
    )
    image: str | None = Field(default=None, description="base64 image, instead of image_id")

    @model_validator(mode="after")
    def _one_image(self) -> ImageRef:
        if (self.image_id is None) == (self.image is None):
            raise ValueError("send exactly one of image_id and image")
        return self


class SegmentRequest(ImageRef):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "image_id": "5e3c0a1f0b2d4f7e9c8a6b5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
                    "prompts": [
                        {"points": [[580, 350]], "labels": [1]},
                        {"box": [480, 250, 720, 600]},
                    ],
                    "multimask": True,
                    "mask_format": "rle",
                }
            ]
        },
    )

    prompts: list[PromptIn] = Field(min_length=1)
    multimask: bool = Field(default=True, description="3 candidates per prompt; false: 1")
    mask_format: Literal["rle", "png", "polygons", "none"] = "rle"
    return_logits: bool = False


class RleMask(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE (pycocotools)")


class Polygon(BaseModel):
    exterior: list[list[int]] = Field(description="[[x, y], ...] boundary pixel centres")
    holes: list[list[list[int]]] = Field(description="rings of the holes inside")


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
