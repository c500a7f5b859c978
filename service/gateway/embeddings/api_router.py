"""``HEAD|GET|DELETE /embeddings/{image_id}``: the cache, by image id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from service.errors import EmbeddingNotFoundError, TenantLimitError
from service.gateway.embedding_source import image_headers
from service.gateway.errors import AUTH, BAD_REQUEST, DELETING, NOT_FOUND, error_responses
from service.gateway.examples import EXAMPLE_IMAGE_ID
from service.gateway.npy import NPY_RESPONSE, npy_response
from service.gateway.protocol_types import IMAGE_ID_PATTERN
from service.gateway.state import State
from service.gateway.tenancy import Tenant

router = APIRouter(prefix="/embeddings", tags=["embeddings"])
ImageId = Annotated[
    str,
    Path(
        pattern=IMAGE_ID_PATTERN,
        description="SHA-256 hex of the image",
        openapi_examples={
            "example": {"summary": "POST /embed's example", "value": EXAMPLE_IMAGE_ID}
        },
    ),
]


@router.head(
    "/{image_id}",
    status_code=204,
    operation_id="has_embedding",
    summary="Is this image's embedding cached?",
    responses={
        204: {"description": "cached"},
        404: {"description": "not cached for the caller's tenant (no body)"},
        **error_responses(AUTH, TenantLimitError, BAD_REQUEST),
    },
)
async def has_embedding(image_id: ImageId, state: State, tenant: Tenant) -> Response:
    if await state.embeddings.contains(image_id, tenant=tenant):
        return Response(status_code=204)
    return Response(status_code=404)


@router.get(
    "/{image_id}",
    response_class=Response,
    operation_id="get_embedding",
    responses={**NPY_RESPONSE, **error_responses(AUTH, TenantLimitError, NOT_FOUND, BAD_REQUEST)},
    summary="The cached embedding as .npy",
)
async def get_embedding(image_id: ImageId, state: State, tenant: Tenant) -> Response:
    embedding = await state.embeddings.lookup(image_id, tenant=tenant)
    if embedding is None:
        raise EmbeddingNotFoundError(f"no cached embedding for image_id {image_id}")
    return npy_response(embedding.as_float(), image_headers(state, image_id, embedding))


@router.delete(
    "/{image_id}",
    status_code=204,
    operation_id="delete_embedding",
    summary="Forget an image's embedding, on every replica",
    description=(
        "204 once the caller's tenant no longer has the embedding on any replica (the "
        "embedding itself goes when no other tenant uploaded the image); 503 "
        "`cache_unavailable` when Redis could not confirm it. An image the tenant never "
        "uploaded answers 204 too, and changes nothing."
    ),
    responses=error_responses(AUTH, TenantLimitError, BAD_REQUEST, DELETING),
)
async def delete_embedding(image_id: ImageId, state: State, tenant: Tenant) -> Response:
    await state.embeddings.delete(image_id, tenant=tenant)
    return Response(status_code=204)
