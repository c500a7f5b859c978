"""``POST /segment/everything``: the point grid on the cached embedding (or a fresh encode).

Results are not cached: the embedding (the GPU's work) is, and a repeat costs the
decoder alone; a result depends on eleven parameters and can weigh megabytes.
"""

from __future__ import annotations

import asyncio
import dataclasses

from service.core.embedding import Embedding
from service.core.everything import Box, EverythingParams, crop_boxes, crop_count, densest_grid
from service.errors import InvalidRequestError
from service.gateway.everything.protocol import (
    DEFAULT_POINTS_PER_SIDE,
    EverythingMaskOut,
    EverythingRequest,
    EverythingResponse,
    EverythingWithImageRequest,
)
from service.gateway.mask_formats import mask_payloads
from service.gateway.segment.serving import image_embedding, image_source
from service.gateway.state import ServingState
from service.model.preprocess import crop_pngs


def _params(request: EverythingRequest, points_per_side: int) -> EverythingParams:
    """The request's parameters of the job (all but the image and the mask format)."""
    names = {f.name for f in dataclasses.fields(EverythingParams)} - {"points_per_side"}
    names &= set(type(request).model_fields)
    return EverythingParams(**request.model_dump(include=names), points_per_side=points_per_side)


async def _crop_embeddings(
    state: ServingState, data: bytes, boxes: list[Box]
) -> list[tuple[Box, Embedding]]:
    """Each crop through the same encoder and cache as any image (as a lossless PNG)."""
    pngs = await asyncio.to_thread(crop_pngs, data, boxes, state.settings.max_image_pixels)
    crops = []
    for box, png in zip(boxes, pngs, strict=True):
        crops.append((box, (await state.embeddings.embed(png)).embedding))
    return crops


async def segment_everything(state: ServingState, request: EverythingRequest) -> EverythingResponse:
    n_layers = request.crop_n_layers if isinstance(request, EverythingWithImageRequest) else 0
    crops_per_image = crop_count(n_layers)
    limit = state.settings.max_everything_prompts
    side = request.points_per_side or max(1, densest_grid(limit, n_layers, DEFAULT_POINTS_PER_SIDE))
    prompts = side**2 * crops_per_image
    if prompts > limit:
        raise InvalidRequestError(
            f"points_per_side, crop_n_layers: {side}² points × "
            f"{crops_per_image} crop(s) = {prompts} prompts; this deployment allows {limit} "
            "(ESAM_MAX_EVERYTHING_PROMPTS)"
        )
    source_id, data = image_source(request)
    image_id, embedding, cached = await image_embedding(state, source_id, data)
    width, height = embedding.width, embedding.height
    crops: list[tuple[Box, Embedding]] = [((0, 0, width, height), embedding)]
    if n_layers:
        assert data is not None
        extra = crop_boxes(width, height, n_layers)[1:]
        crops += await _crop_embeddings(state, data, extra)

    found = await state.decoder.everything(crops, _params(request, side))
    payloads = await mask_payloads([p.rle for p in found], request.mask_format)
    masks = []
    for p, payload in zip(found, payloads, strict=True):
        x0, y0, x1, y1 = p.box
        masks.append(
            EverythingMaskOut(
                mask=payload,
                area=p.area,
                bbox=[float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                predicted_iou=p.predicted_iou,
                stability_score=p.stability_score,
                point=list(p.point),
            )
        )
    return EverythingResponse(
        image_id=image_id,
        model=state.model_id,
        width=width,
        height=height,
        cached=cached,
        masks=masks,
    )
