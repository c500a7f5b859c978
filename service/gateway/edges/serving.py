"""``POST /edges``: an edge-strength map of the image from its cached embedding (or a fresh
encode), as an 8-bit PNG or the float map as ``.npy``.

Like segment everything, results are not cached: the embedding (the GPU's work) is.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from service.core.edges import EdgeMap, EdgeParams
from service.core.tenancy import priority_scope
from service.gateway.edges.protocol import (
    DEFAULT_POINTS_PER_SIDE,
    EdgesRequest,
    EdgesWithImageRequest,
)
from service.gateway.embedding_source import grid_job, image_headers
from service.gateway.state import ServingState


@dataclass(frozen=True)
class EdgesResult:
    edges: EdgeMap
    headers: dict[str, str]


def _params(request: EdgesRequest, points_per_side: int) -> EdgeParams:
    return EdgeParams(
        points_per_side=points_per_side,
        points_per_batch=request.points_per_batch,
        box_nms_thresh=request.box_nms_thresh,
        boundary_px=request.boundary_px,
        edge_nms=request.edge_nms,
    )


async def detect_edges(state: ServingState, tenant: str, request: EdgesRequest) -> EdgesResult:
    """A long job: it runs as bulk work (``X-Priority`` aside), never in the share of the
    decoder's slots and encode budget kept for interactive requests."""
    with priority_scope("bulk"):
        return await _detect_edges(state, tenant, request)


async def _detect_edges(state: ServingState, tenant: str, request: EdgesRequest) -> EdgesResult:
    n_layers = request.crop_n_layers if isinstance(request, EdgesWithImageRequest) else 0
    job = await grid_job(
        state, tenant, request, request.points_per_side, n_layers, DEFAULT_POINTS_PER_SIDE
    )
    params = _params(request, job.points_per_side)
    edges = await state.decoder.edges(job.image_id, job.crops, params)
    headers = image_headers(state, job.image_id, job.embedding, job.cached)
    headers["X-Masks"] = str(edges.masks)
    headers["X-Candidates"] = str(edges.candidates)
    headers["Server-Timing"] = ", ".join(
        f"{step};dur={seconds * 1e3:.1f}" for step, seconds in edges.seconds.items()
    )
    return EdgesResult(edges, headers)


def _png(strength: NDArray[np.float32]) -> bytes:
    gray = np.rint(np.clip(strength, 0.0, 1.0) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


async def edges_png(strength: NDArray[np.float32]) -> bytes:
    """The map as an 8-bit grayscale PNG (0 = no edge, 255 = the strongest), off the loop."""
    return await asyncio.to_thread(_png, strength)
