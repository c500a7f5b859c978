"""Masks in the wire formats a request asks for, from the decoders' COCO RLE.

Decoders (in this process or in Triton) give every mask as COCO RLE; PNG and polygons
are made here, at the edge, off the event loop, for the masks a response returns.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any, Literal

from service.core.tracing import tracer
from service.model.masks import CocoRle, decode_rle, encode_png, mask_to_polygons

MaskFormat = Literal["rle", "png", "polygons", "none"]


def mask_payload(rle: CocoRle, mask_format: MaskFormat) -> Any:
    """One mask in ``mask_format``: the RLE itself, base64 PNG, polygons, or None."""
    if mask_format == "rle":
        return rle
    if mask_format == "png":
        return base64.b64encode(encode_png(decode_rle(rle))).decode("ascii")
    if mask_format == "polygons":
        return mask_to_polygons(decode_rle(rle))
    return None


async def mask_payloads(rles: Sequence[CocoRle], mask_format: MaskFormat) -> list[Any]:
    """Every mask in ``mask_format``; PNG and polygons in a worker thread."""
    if mask_format in ("rle", "none"):
        return [mask_payload(rle, mask_format) for rle in rles]

    def encode() -> list[Any]:
        with tracer.start_as_current_span("esam.masks.encode") as span:
            span.set_attributes({"esam.mask_format": mask_format, "esam.masks": len(rles)})
            return [mask_payload(rle, mask_format) for rle in rles]

    return await asyncio.to_thread(encode)  # with this context: the span joins the request
