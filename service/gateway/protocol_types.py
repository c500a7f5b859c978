"""Building blocks of request models whose JSON Schema says exactly what they accept.

Request models are strict (no "1" for 1, no 1 for true) and forbid unknown fields;
optional fields are omitted, never null; integers take JSON's integral numbers (2.0
is an integer to JSON Schema); cross-field rules are stated as schema keywords.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"


def integral(value: Any) -> Any:
    """2.0 → 2 (JSON Schema's integer); anything else is left to strict validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(integral)]
#: A pixel coordinate of the original image: finite and ≥ 0 (and ≤ its width or
#: height, which only the server knows).
Coordinate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: Base64 image bytes, as JSON Schema (``contentEncoding``) and OpenAPI 3.0
#: (``format: byte``) say it.
Base64Image = Annotated[
    str, Field(min_length=4, json_schema_extra={"contentEncoding": "base64", "format": "byte"})
]


def reject_null(value: Any) -> Any:
    """Optional fields are omitted, not null: the schema has no null to offer a client."""
    if value is None:
        raise ValueError("omit the field instead of sending null")
    return value


def no_default(schema: JsonSchemaValue) -> None:
    """An omitted optional field has no value: no ``default: null`` beside its type."""
    schema.pop("default", None)


def add_to_schema(keywords: JsonSchemaValue) -> Any:
    """A ``__get_pydantic_json_schema__`` that adds keywords to a model's schema
    (inherited by subclasses, unlike ``json_schema_extra``)."""

    def hook(
        cls: type[BaseModel], core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema.update(keywords)
        return schema

    return classmethod(hook)


#: Union tags of the two ways a request names its image (``Tag``); not part of any
#: field's location in an error message.
BY_ID, WITH_IMAGE = "by_id", "with_image"


def _which_image(value: Any) -> str | None:
    if isinstance(value, dict):
        by_id, with_image = "image_id" in value, "image" in value
        if by_id == with_image:
            return None
        return BY_ID if by_id else WITH_IMAGE
    return BY_ID if hasattr(value, "image_id") else WITH_IMAGE if hasattr(value, "image") else None


#: Picks the variant of a by-id-or-inline-image request from its keys, so that a
#: client's mistake gets one clear message rather than every variant's complaints.
ONE_IMAGE = Discriminator(
    _which_image,
    custom_error_type="one_image",
    custom_error_message="send exactly one of image_id and image",
)


class ById(BaseModel):
    """The image by the ``image_id`` that /embed returned."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image_id: str = Field(
        pattern=IMAGE_ID_PATTERN, description="From /embed (SHA-256 hex of the image file)."
    )


class WithImage(BaseModel):
    """The image itself, encoded (and cached) on the way when it is new."""

    model_config = ConfigDict(extra="forbid", strict=True)

    image: Base64Image = Field(
        description="base64 of the image file (a data: URL prefix is accepted)"
    )


# --- masks as every feature answers them ------------------------------------------
class RleMask(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE (pycocotools)")


class Polygon(BaseModel):
    exterior: list[list[int]] = Field(description="[[x, y], ...] boundary pixel centres")
    holes: list[list[list[int]]] = Field(description="rings of the holes inside")
