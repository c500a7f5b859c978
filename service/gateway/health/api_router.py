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
    decoder: Literal["ok", "unavailable", "mismatch"] = Field(
        description="can clicks be decoded now (ESAM_DECODER=triton: reported; `mismatch`, a "
        "Triton decoder holding another checkpoint, takes the gateway out of service)"
    )
    detail: str | None = Field(
        default=None, description="why not ready (the two models of a mismatch)"
    )


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


async def _decoder_ok(state: ServingState) -> bool:
    try:
        return await asyncio.wait_for(state.decoder.ready(), 2 * _PROBE_TIMEOUT_S)
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
        "neither, and new images get a fast 503 with `Retry-After`. The body reports both, "
        "and the decoder; a Triton decoder that holds another checkpoint than this gateway "
        "(`decoder: mismatch`, both models in `detail`) is a 503: its masks would be wrong."
    ),
    responses={
        503: {
            "model": Readiness,
            "description": "shutting down, or the Triton decoder holds another checkpoint",
        }
    },
)
async def readyz(state: State, response: Response) -> Readiness:
    encoder_ok, decoder_ok, redis = await asyncio.gather(
        _encoder_ok(state), _decoder_ok(state), state.cache.redis_status()
    )
    mismatch = state.decoder.mismatch
    serving = not state.draining and mismatch is None
    if not serving:
        response.status_code = 503
    return Readiness(
        status="ready" if serving else "not_ready",
        model=state.model_id,
        encoder="ok" if encoder_ok else "unavailable",
        redis=redis,
        decoder="mismatch" if mismatch else "ok" if decoder_ok else "unavailable",
        detail=mismatch,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
