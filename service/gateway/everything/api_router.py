"""HTTP routing of ``POST /segment/everything``."""

from __future__ import annotations

from fastapi import APIRouter

from service.gateway.errors import AUTH, BAD_INPUT, DECODING, NOT_FOUND, OVERLOAD, error_responses
from service.gateway.everything.protocol import EverythingRequest, EverythingResponse
from service.gateway.everything.serving import segment_everything
from service.gateway.state import State
from service.gateway.tenancy import Tenant

router = APIRouter(tags=["segmentation"])


@router.post(
    "/segment/everything",
    response_model=EverythingResponse,
    response_model_exclude_none=True,
    operation_id="segment_everything",
    responses=error_responses(AUTH, NOT_FOUND, BAD_INPUT, OVERLOAD, DECODING),
    summary="Every object: masks from a grid of point prompts",
    description=(
        "SAM's automatic mask generation on the image's embedding (cached, or encoded "
        "from `image`): a `points_per_side`² grid of foreground points "
        "((i + 0.5) / n · width, (j + 0.5) / n · height, x fastest), all three candidates "
        "of each point decoded in batches of `points_per_batch`; a candidate is kept when "
        "its predicted IoU is above `pred_iou_thresh` and its stability score "
        "(area(logits > offset) / area(logits > −offset) over the full-size logits) is at "
        "least `stability_score_thresh`; masks are logits > 0; greedy box NMS at "
        "`box_nms_thresh` (1.0 disables it) in ranking order, ties in candidate order; "
        "optional small-region clean-up; at most `max_masks`, best first. One job at a "
        "time per replica (`ESAM_MAX_EVERYTHING_JOBS`): another answers 429 at once."
    ),
)
async def segment_everything_route(
    request: EverythingRequest, state: State, tenant: Tenant
) -> EverythingResponse:
    return await segment_everything(state, tenant, request)
