"""Where a request's embedding comes from, for every feature that takes an image by id
or inline: the cache by ``image_id`` (404 when absent), or an encode of the image the
request carries; the embeddings of crops cut from that image; and the two together for
the grid jobs (segment everything, edges), within ``ESAM_MAX_EVERYTHING_PROMPTS``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from service.core.embedding import Embedding
from service.core.embedding_service import SizeCheck
from service.core.everything import Box, crop_boxes, crop_count, densest_grid
from service.errors import EmbeddingNotFoundError, InvalidRequestError
from service.gateway.images import decode_base64_image
from service.gateway.protocol_types import ById, WithImage
from service.gateway.state import ServingState
from service.model.preprocess import crop_pngs


def image_source(request: ById | WithImage) -> tuple[str | None, bytes | None]:
    """``(image_id, None)``, or ``(None, the image file)`` decoded from base64."""
    if isinstance(request, WithImage):
        return None, decode_base64_image(request.image)
    return request.image_id, None


async def image_embedding(
    state: ServingState,
    tenant: str,
    image_id: str | None,
    data: bytes | None,
    check: SizeCheck | None = None,
) -> tuple[str, Embedding, bool]:
    """``(image_id, embedding, cached)``: from the cache by ``image_id`` (404 when absent
    or not the tenant's), or through an encode of the image file ``data`` (exactly one of
    the two is given)."""
    if image_id is not None:
        embedding = await state.embeddings.lookup(image_id, tenant=tenant)
        if embedding is None:
            raise EmbeddingNotFoundError(
                f"no cached embedding for image_id {image_id}: send the image again "
                "(POST /embed, or 'image' in this request)"
            )
        if check:
            check(embedding.width, embedding.height)
        return image_id, embedding, True
    assert data is not None
    result = await state.embeddings.embed(data, tenant=tenant, check=check)
    return result.image_id, result.embedding, result.cached


def image_headers(
    state: ServingState, image_id: str, embedding: Embedding, cached: bool | None = None
) -> dict[str, str]:
    """The headers that say which image a binary answer (.npy, PNG) is about."""
    headers = {
        "X-Image-Id": image_id,
        "X-Image-Width": str(embedding.width),
        "X-Image-Height": str(embedding.height),
        "X-Model": state.model_id,
    }
    if cached is not None:
        headers["X-Cached"] = "true" if cached else "false"
    return headers


async def crop_embeddings(
    state: ServingState, tenant: str, data: bytes, boxes: list[Box]
) -> list[tuple[Box, Embedding]]:
    """Each crop through the same encoder and cache as any image (as a lossless PNG)."""
    pngs = await asyncio.to_thread(crop_pngs, data, boxes, state.settings.max_image_pixels)
    crops = []
    for box, png in zip(boxes, pngs, strict=True):
        crops.append((box, (await state.embeddings.embed(png, tenant=tenant)).embedding))
    return crops


@dataclass(frozen=True)
class GridJob:
    """A grid job's image and its grid: ``crops`` = the whole image's box and embedding,
    then its crops' (``crop_n_layers``)."""

    image_id: str
    embedding: Embedding
    cached: bool
    points_per_side: int
    crops: list[tuple[Box, Embedding]]


async def grid_job(
    state: ServingState,
    tenant: str,
    request: ById | WithImage,
    points_per_side: int | None,
    n_layers: int,
    default_points_per_side: int,
) -> GridJob:
    """The grid (left out: the densest up to the default that the budget allows), checked
    against ``ESAM_MAX_EVERYTHING_PROMPTS`` (422) before anything is encoded; then the
    image's embedding and its crops'."""
    limit = state.settings.max_everything_prompts
    side = points_per_side or max(1, densest_grid(limit, n_layers, default_points_per_side))
    prompts = side**2 * crop_count(n_layers)
    if prompts > limit:
        raise InvalidRequestError(
            f"points_per_side, crop_n_layers: {side}² points × {crop_count(n_layers)} "
            f"crop(s) = {prompts} prompts; this deployment allows {limit} "
            "(ESAM_MAX_EVERYTHING_PROMPTS)"
        )
    source_id, data = image_source(request)
    image_id, embedding, cached = await image_embedding(state, tenant, source_id, data)
    width, height = embedding.width, embedding.height
    crops: list[tuple[Box, Embedding]] = [((0, 0, width, height), embedding)]
    if n_layers:
        assert data is not None  # crops come only with the image itself
        crops += await crop_embeddings(state, tenant, data, crop_boxes(width, height, n_layers)[1:])
    return GridJob(image_id, embedding, cached, side, crops)
