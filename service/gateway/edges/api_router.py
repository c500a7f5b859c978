"""HTTP routing of ``POST /edges``."""

from __future__ import annotations

from fastapi import APIRouter, Header, Response

from service.gateway.edges.protocol import EdgesRequest
from service.gateway.edges.serving import detect_edges, edges_png
from service.gateway.errors import AUTH, BAD_INPUT, DECODING, NOT_FOUND, OVERLOAD, error_responses
from service.gateway.npy import NPY_MEDIA_TYPE, npy_response, wants_npy
from service.gateway.state import State
from service.gateway.tenancy import Tenant

router = APIRouter(tags=["segmentation"])

_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/edges",
    response_class=Response,
    operation_id="detect_edges",
    responses={
        200: {
            "description": "The edge-strength map at the image's size: an 8-bit grayscale PNG "
            f"(0 no edge, 255 the strongest), or with `Accept: {NPY_MEDIA_TYPE}` the float32 "
            "map [height, width] in [0, 1]. Headers: `X-Image-Id`, `X-Image-Width`, "
            "`X-Image-Height`, `X-Model`, `X-Cached`, `X-Masks` (masks after NMS), "
            "`X-Candidates` (non-empty candidates before it), `Server-Timing` (each step).",
            "content": {"image/png": _BINARY, NPY_MEDIA_TYPE: _BINARY},
        },
        **error_responses(AUTH, NOT_FOUND, BAD_INPUT, OVERLOAD, DECODING),
    },
    summary="Zero-shot edge detection: an edge map from a grid of point prompts",
    description=(
        "The Segment Anything paper's zero-shot edge detection on the image's embedding "
        "(cached, or encoded from `image`): a `points_per_side`² grid of foreground points "
        "(16² by default) and all three candidates of every point (768 masks), no predicted-"
        "IoU or stability filter; box NMS at `box_nms_thresh` by predicted IoU drops "
        "redundant masks; a 3×3 Sobel filter on each remaining mask's probability map "
        "(sigmoid of its logits upsampled bicubically to the image), kept only within "
        "`boundary_px` of the mask's boundary; the pixel-wise maximum over masks, linearly "
        "normalised to [0, 1]; edge NMS along the gradient thins it to one pixel "
        "(`edge_nms`). One job at a time per replica, shared with /segment/everything "
        "(`ESAM_MAX_EVERYTHING_JOBS`): another answers 429 at once."
    ),
)
async def detect_edges_route(
    request: EdgesRequest, state: State, tenant: Tenant, accept: str | None = Header(default=None)
) -> Response:
    result = await detect_edges(state, tenant, request)
    strength = result.edges.strength
    if wants_npy(accept):
        return npy_response(strength, result.headers)
    png = await edges_png(strength)
    return Response(png, media_type="image/png", headers=result.headers)
