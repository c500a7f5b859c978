"""``POST /embed``: compute (or find) an image's embedding."""

from __future__ import annotations

from service.core.embeddings import EmbedResult
from service.gateway.state import ServingState


async def embed_image(state: ServingState, tenant: str, data: bytes) -> EmbedResult:
    return await state.embeddings.embed(data, tenant=tenant)
