"""HTTP routing of ``POST /segment``."""

from __future__ import annotations

from fastapi import APIRouter

from service.gateway.errors import AUTH, BAD_INPUT, DECODING, NOT_FOUND, OVERLOAD, error_responses
from service.gateway.segment.protocol import SegmentRequest, SegmentResponse
from service.gateway.segment.serving import segment as run_segment
from service.gateway.state import State
from service.gateway.tenancy import Tenant

router = APIRouter(tags=["segmentation"])


@router.post(
    "/segment",
    response_model=SegmentResponse,
    response_model_exclude_none=True,
    operation_id="segment",
    responses=error_responses(AUTH, NOT_FOUND, BAD_INPUT, OVERLOAD, DECODING),
    summary="Masks for point and box prompts on one image",
    description=(
        "Send `image_id` (from `/embed`) or the image itself (base64). Each prompt gets "
        "its candidates (3 with `multimask`, else 1), best predicted IoU first. An unknown "
        "`image_id` answers 404 `embedding_not_found`: send the image again."
    ),
)
async def segment(request: SegmentRequest, state: State, tenant: Tenant) -> SegmentResponse:
    return await run_segment(state, tenant, request)
