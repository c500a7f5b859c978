"""``POST /segment/everything``: the point grid on the cached embedding (or a fresh encode).

Results are not cached: the embedding (the GPU's work) is, and a repeat costs the
decoder alone; a result depends on eleven parameters and can weigh megabytes.
"""

from __future__ import annotations

import dataclasses

from service.core.everything import EverythingParams
from service.core.tenancy import priority_scope
from service.gateway.embedding_source import grid_job
from service.gateway.everything.protocol import (
    DEFAULT_POINTS_PER_SIDE,
    EverythingMaskOut,
    EverythingRequest,
    EverythingResponse,
    EverythingWithImageRequest,
)
from service.gateway.mask_formats import mask_payloads
from service.gateway.state import ServingState


def _params(request: EverythingRequest, points_per_side: int) -> EverythingParams:
    """The request's parameters of the job (all but the image and the mask format)."""
    names = {f.name for f in dataclasses.fields(EverythingParams)} - {"points_per_side"}
    names &= set(type(request).model_fields)
    return EverythingParams(**request.model_dump(include=names), points_per_side=points_per_side)


async def segment_everything(
    state: ServingState, tenant: str, request: EverythingRequest
) -> EverythingResponse:
    """A long job: it runs as bulk work (``X-Priority`` aside), never in the share of the
    decoder's slots and encode budget kept for interactive requests."""
    with priority_scope("bulk"):
        return await _segment_everything(state, tenant, request)


async def _segment_everything(
    state: ServingState, tenant: str, request: EverythingRequest
) -> EverythingResponse:
    n_layers = request.crop_n_layers if isinstance(request, EverythingWithImageRequest) else 0
    job = await grid_job(
        state, tenant, request, request.points_per_side, n_layers, DEFAULT_POINTS_PER_SIDE
    )
    found = await state.decoder.everything(job.crops, _params(request, job.points_per_side))
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
        image_id=job.image_id,
        model=state.model_id,
        width=job.embedding.width,
        height=job.embedding.height,
        cached=job.cached,
        masks=masks,
    )
