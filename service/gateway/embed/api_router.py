"""HTTP routing of ``POST /embed``."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request, Response

from service.gateway.embed.protocol import EmbedResponse
from service.gateway.embedding_source import image_headers
from service.gateway.errors import AUTH, BAD_INPUT, ENCODING, OVERLOAD, error_responses
from service.gateway.images import IMAGE_REQUEST_BODY, read_image
from service.gateway.npy import NPY_MEDIA_TYPE, npy_response, wants_npy
from service.gateway.state import State
from service.gateway.tenancy import Tenant

router = APIRouter(tags=["embeddings"])

_IMAGE_ID = "$response.body#/image_id"
#: OpenAPI links: what a client (or a stateful fuzzer) does with the returned image_id.
EMBED_LINKS = {
    "Segment": {
        "operationId": "segment",
        "requestBody": {"image_id": _IMAGE_ID, "prompts": [{"points": [[0, 0]], "labels": [1]}]},
        "description": "Prompts for this image by its id.",
    },
    "GetEmbedding": {"operationId": "get_embedding", "parameters": {"image_id": _IMAGE_ID}},
    "HasEmbedding": {"operationId": "has_embedding", "parameters": {"image_id": _IMAGE_ID}},
    "DeleteEmbedding": {"operationId": "delete_embedding", "parameters": {"image_id": _IMAGE_ID}},
}


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Compute an image's embedding (once) and cache it",
    description=(
        "Send the image as the raw body (`Content-Type` image/jpeg, image/png, image/webp, "
        "image/bmp, image/tiff or application/octet-stream: the bytes decide the format), "
        "as multipart field "
        '`image`, or as JSON `{"image": "<base64>"}`. The embedding is cached under '
        "`image_id` (SHA-256 of the bytes), so later `/segment` calls can send just the id. "
        f"With `Accept: {NPY_MEDIA_TYPE}` the body is the embedding itself and the other "
        "fields come as `X-Image-Id`, `X-Image-Width`, `X-Image-Height`, `X-Model`, `X-Cached`."
    ),
    openapi_extra={"requestBody": IMAGE_REQUEST_BODY},
    operation_id="embed",
    responses={
        200: {
            "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
            "description": "JSON by default; the .npy embedding with the Accept header.",
            "links": EMBED_LINKS,
        },
        **error_responses(AUTH, BAD_INPUT, OVERLOAD, ENCODING),
    },
)
async def embed(
    request: Request, state: State, tenant: Tenant, accept: str | None = Header(default=None)
) -> EmbedResponse | Response:
    result = await state.embeddings.embed(await read_image(request), tenant=tenant)
    if wants_npy(accept):
        headers = image_headers(state, result.image_id, result.embedding, result.cached)
        return npy_response(result.embedding.as_float(), headers)
    return EmbedResponse(
        image_id=result.image_id,
        width=result.embedding.width,
        height=result.embedding.height,
        model=state.model_id,
        cached=result.cached,
    )
