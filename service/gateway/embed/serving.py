"""``POST /embed``: compute (or find) an image's embedding."""

from __future__ import annotations

from service.core.embeddings import EmbedResult
from service.gateway.state import ServingState


async def embed_image(state: ServingState, data: bytes) -> EmbedResult:
    return await state.embeddings.embed(data)


def embedding_headers(state: ServingState, result: EmbedResult) -> dict[str, str]:
    return {
        "X-Image-Id": result.image_id,
        "X-Image-Width": str(result.embedding.width),
        "X-Image-Height": str(result.embedding.height),
        "X-Model": state.model_id,
        "X-Cached": "true" if result.cached else "false",
    }
