"""Getting image bytes out of a request: raw body, multipart field ``image``, or base64 JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Final

from fastapi import Request
from pydantic import TypeAdapter
from starlette.datastructures import UploadFile

from service.errors import InvalidImageError, InvalidRequestError, UnsupportedMediaTypeError
from service.gateway.examples import EXAMPLE_IMAGE_BASE64
from service.gateway.protocol_types import Base64Image

#: The raw-body media types /embed takes: the formats the decoder reads (a JPEG with a
#: second frame, MPO, is a JPEG), and octet-stream for clients that do not know the type.
#: The bytes decide the format; the header only has to be one of these.
IMAGE_MEDIA_TYPES: Final = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "application/octet-stream",
)

_BINARY: Final = {"type": "string", "format": "binary"}

#: OpenAPI description of the three ways to send an image.
IMAGE_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        **{media_type: {"schema": _BINARY} for media_type in IMAGE_MEDIA_TYPES},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "additionalProperties": False,
                "properties": {"image": _BINARY},
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "additionalProperties": False,
                "properties": {
                    "image": {
                        **TypeAdapter(Base64Image).json_schema(),
                        "description": "base64 of the image file (a data: URL prefix is accepted)",
                    }
                },
            },
            "example": {"image": EXAMPLE_IMAGE_BASE64},
        },
    },
}


def decode_base64_image(value: str, field: str = "image") -> bytes:
    """Standard base64 (padding required); an optional ``data:image/...;base64,`` prefix."""
    if value.startswith("data:"):
        _, sep, value = value.partition(",")
        if not sep:
            raise InvalidImageError(f"{field}: malformed data URL")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{field}: not valid base64") from exc
    if not data:
        raise InvalidImageError(f"{field}: empty image")
    return data


async def read_image(request: Request) -> bytes:
    """The uploaded image's bytes, whichever of the three forms the client used."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in IMAGE_MEDIA_TYPES:
        data = await request.body()
        if not data:
            raise InvalidImageError("the request body is empty")
        return data
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile) or set(form.keys()) != {"image"}:
                raise InvalidRequestError("multipart body must be one file field named 'image'")
            data = await upload.read()
        if not data:
            raise InvalidImageError("the 'image' field is empty")
        return data
    if content_type == "application/json":
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidRequestError("the body is not valid JSON") from exc
        if not isinstance(payload, dict) or set(payload) != {"image"}:
            raise InvalidRequestError('JSON body must be {"image": "<base64>"}')
        if not isinstance(payload["image"], str):
            raise InvalidImageError("image: must be a base64 string")
        return decode_base64_image(payload["image"])
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {content_type or '(none)'}: send the image as "
        f"{', '.join(IMAGE_MEDIA_TYPES)}, multipart/form-data with field 'image', "
        "or application/json"
    )
