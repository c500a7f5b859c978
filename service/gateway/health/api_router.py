"""``/healthz``, ``/readyz`` and ``/metrics`` (never behind the API key)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.gateway.state import State

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    model: str
    encoder: Literal["ok", "unavailable"]
    redis: Literal["disabled", "ok", "down"]


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Model loaded and encoder reachable (Redis is reported, not required)",
    responses={503: {"model": Readiness, "description": "not ready"}},
)
async def readyz(state: State, response: Response) -> Readiness:
    encoder_ok = await state.encoder.ready()
    redis = await state.embeddings.cache.redis_status()
    if not encoder_ok:
        response.status_code = 503
    return Readiness(
        status="ready" if encoder_ok else "not_ready",
        model=state.model_id,
        encoder="ok" if encoder_ok else "unavailable",
        redis=redis,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
