"""Label Studio's ML-backend protocol under ``/labelstudio``: the URL entered in Label
Studio's Model settings is ``http://<gateway>/labelstudio``.

``/health`` and ``/setup`` touch neither the encoder nor the cache (Label Studio gives
them 1 s and 3 s); ``/webhook`` answers every event at once and ignores it. The routes
are Label Studio's contract, not this API's: they stay out of the OpenAPI document and
are described in docs/integrations.md. Errors use the gateway's error table.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request

from service.gateway.labelstudio.protocol import (
    HealthResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
)
from service.gateway.labelstudio.serving import LabelStudioBackend

router = APIRouter(prefix="/labelstudio", include_in_schema=False)


def get_backend(request: Request) -> LabelStudioBackend:
    return cast(LabelStudioBackend, request.app.state.labelstudio)


Backend = Annotated[LabelStudioBackend, Depends(get_backend)]


@router.get("")
@router.get("/")
@router.get("/health")
async def health(backend: Backend) -> HealthResponse:
    return HealthResponse(model_version=backend.model_version)


@router.post("/setup")
async def setup(body: SetupRequest, backend: Backend) -> SetupResponse:
    return backend.setup(body)


@router.get("/versions")
async def versions(backend: Backend) -> dict[str, list[str]]:
    return {"versions": [backend.model_version]}


@router.post("/predict")
async def predict(body: PredictRequest, backend: Backend) -> PredictResponse:
    return await backend.predict(body)


@router.post("/webhook")
async def webhook() -> dict[str, Any]:
    """Every event (annotation created, START_TRAINING, ...) is acknowledged: the model
    does not train on annotations, and Label Studio gives a webhook 1 s."""
    return {"status": "ok"}
