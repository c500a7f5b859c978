"""Label Studio's ML-backend protocol under ``/labelstudio``: the URL entered in Label
Studio's Model settings is ``http://<gateway>/labelstudio``.

``/health`` and ``/setup`` touch neither the encoder nor the cache (Label Studio gives
them 1 s and 3 s); ``/webhook`` answers every event at once and ignores it. The routes
are Label Studio's contract; they are in the OpenAPI document (tag "Label Studio ML
backend", HTTP Basic with an API key as the password, or Bearer) so that the document
lists everything the server answers. Errors use the gateway's error table.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request

from service.errors import (
    ImageFetchError,
    ImageTooLargeError,
    ImageUrlNotAllowedError,
    TenantLimitError,
)
from service.gateway.errors import AUTH, BAD_INPUT, BAD_REQUEST, DECODING, OVERLOAD, error_responses
from service.gateway.labelstudio.protocol import (
    HealthResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    VersionsResponse,
    WebhookEvent,
    WebhookResponse,
)
from service.gateway.labelstudio.serving import LabelStudioBackend
from service.gateway.tenancy import Tenant

TAG = "Label Studio ML backend"
router = APIRouter(prefix="/labelstudio", tags=[TAG])


def get_backend(request: Request) -> LabelStudioBackend:
    return cast(LabelStudioBackend, request.app.state.labelstudio)


Backend = Annotated[LabelStudioBackend, Depends(get_backend)]


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
@router.get(
    "/health",
    operation_id="labelstudio_health",
    responses=error_responses(AUTH, TenantLimitError),
    summary="Label Studio's health check (answers within its 1 s)",
)
async def health(backend: Backend) -> HealthResponse:
    return HealthResponse(model_version=backend.model_version)


@router.post(
    "/setup",
    operation_id="labelstudio_setup",
    responses=error_responses(AUTH, TenantLimitError, ImageTooLargeError, BAD_REQUEST),
    summary="Label Studio connects a project: its labeling config is checked",
    description="A config the model cannot answer (no `<Image>` with a `<BrushLabels>` or "
    "`<PolygonLabels>` on it) is refused with 422 naming what is missing; nothing is "
    "encoded or fetched.",
)
async def setup(body: SetupRequest, backend: Backend) -> SetupResponse:
    return backend.setup(body)


@router.get(
    "/versions",
    operation_id="labelstudio_versions",
    responses=error_responses(AUTH, TenantLimitError),
    summary="The model version Label Studio lists",
)
async def versions(backend: Backend) -> VersionsResponse:
    return VersionsResponse(versions=[backend.model_version])


@router.post(
    "/predict",
    operation_id="labelstudio_predict",
    responses=error_responses(
        AUTH, BAD_INPUT, ImageUrlNotAllowedError, OVERLOAD, ImageFetchError, DECODING
    ),
    summary="Masks for an annotator's clicks, or a project's tasks encoded ahead",
    description=(
        "With `params.context` (an annotator's smart KeyPointLabels / RectangleLabels): one "
        "task, one prompt, the mask as a brush region (and polygons for a "
        "`<PolygonLabels>`); its error is the answer. Without: each task's image is fetched, "
        "encoded and cached, and every task gets one prediction (empty, or segment "
        "everything with `ESAM_LABEL_STUDIO_PREANNOTATE=everything`); in a batch a task "
        "that fails gets `+failed` and one not ready within "
        "`ESAM_LABEL_STUDIO_BATCH_BUDGET_S` `+pending` after the model version."
    ),
)
async def predict(body: PredictRequest, backend: Backend, tenant: Tenant) -> PredictResponse:
    return await backend.predict(body, tenant)


@router.post(
    "/webhook",
    operation_id="labelstudio_webhook",
    responses=error_responses(AUTH, TenantLimitError, ImageTooLargeError, BAD_REQUEST),
    summary="Label Studio's events, acknowledged and ignored (the model does not train)",
)
async def webhook(event: WebhookEvent) -> WebhookResponse:
    """Every event (annotation created, START_TRAINING, ...) is acknowledged: the model
    does not train on annotations, and Label Studio gives a webhook 1 s."""
    return WebhookResponse()
