"""``/healthz``, ``/readyz`` and ``/metrics`` (never behind the API key)."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from service.gateway.state import ServingState, State

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"] = Field(
        description="ready: this process answers prompts on cached embeddings "
        "(not_ready only while it shuts down)"
    )
    model: str
    encoder: Literal["ok", "unavailable"] = Field(
        description="can new images be encoded now (reported, not required)"
    )
    redis: Literal["disabled", "ok", "down"] = Field(description="reported, not required")


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health()


#: Each dependency gets this long to answer: the whole probe stays under a second.
_PROBE_TIMEOUT_S = 0.5


async def _encoder_ok(state: ServingState) -> bool:
    try:
        return await asyncio.wait_for(state.encoder.ready(), _PROBE_TIMEOUT_S)
    except TimeoutError:
        return False


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready to serve prompts on cached embeddings (encoder and Redis are reported)",
    description=(
        "200 while this process can answer `/segment` on cached embeddings: the decoder is "
        "loaded and the process is not shutting down. An unavailable encoder (Triton down) "
        "or Redis does not take the gateway out of service: prompts on cached images need "
        "neither, and new images get a fast 503 with `Retry-After`. The body reports both."
    ),
    responses={503: {"model": Readiness, "description": "shutting down"}},
)
async def readyz(state: State, response: Response) -> Readiness:
    encoder_ok, redis = await asyncio.gather(
        _encoder_ok(state), state.embeddings.cache.redis_status()
    )
    if state.draining:
        response.status_code = 503
    return Readiness(
        status="not_ready" if state.draining else "ready",
        model=state.model_id,
        encoder="ok" if encoder_ok else "unavailable",
        redis=redis,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
