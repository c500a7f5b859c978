"""``build_app(settings)``: middleware, error handlers and routers; serving objects at start-up."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware

from service import __version__
from service.core.loading import LoadedModel, load_serving_model, resolve_checkpoint
from service.core.metrics import Metrics
from service.gateway.auth import ApiKeyMiddleware, KeyTable
from service.gateway.docs.api_router import router as docs_router
from service.gateway.docs.openapi import deployment_openapi
from service.gateway.edges.api_router import router as edges_router
from service.gateway.embed.api_router import router as embed_router
from service.gateway.embeddings.api_router import router as embeddings_router
from service.gateway.errors import register_error_handlers
from service.gateway.everything.api_router import router as everything_router
from service.gateway.health.api_router import router as health_router
from service.gateway.labelstudio.api_router import router as labelstudio_router
from service.gateway.labelstudio.serving import LabelStudioBackend
from service.gateway.middleware import RequestContextMiddleware, UnhandledErrorMiddleware
from service.gateway.segment.api_router import router as segment_router
from service.gateway.state import EncoderBuilder, build_encoder, init_state
from service.gateway.tenancy import TenancyMiddleware
from service.gateway.ui.api_router import router as ui_router
from service.settings import Settings

DESCRIPTION = """
Interactive segmentation with EfficientSAM. Send an image once (`POST /embed`),
then any number of point and box prompts (`POST /segment` with its `image_id`):
the image encoder runs once per image, every prompt only runs the small mask decoder.
`POST /segment/everything` finds every object from a grid of point prompts on the
same cached embedding.

Errors are `{"error": {"code", "message"}}` with a stable `code`; every response
carries `X-Request-Id`.
"""


def build_app(
    settings: Settings | None = None,
    *,
    model: LoadedModel | None = None,
    encoder_builder: EncoderBuilder = build_encoder,
) -> FastAPI:
    """The gateway for ``settings`` (read from the environment when omitted).

    For a program that embeds the gateway (and for the tests): ``model`` is a model
    already loaded for these settings (its checkpoint is then neither resolved nor
    read again), ``encoder_builder`` builds the encoder in place of the one the
    settings name (any :class:`~service.core.encoders.Encoder`).
    """
    settings = settings or Settings()
    metrics = Metrics()

    async def load() -> LoadedModel:
        checkpoint = await asyncio.to_thread(resolve_checkpoint, settings)
        return await asyncio.to_thread(
            load_serving_model, checkpoint, settings.variant, settings.decoder_device
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = model if model is not None else await load()
        state = await init_state(settings, loaded, metrics, encoder_builder=encoder_builder)
        app.state.serving = state
        app.state.labelstudio = LabelStudioBackend(settings, state)
        try:
            yield
        finally:
            await app.state.labelstudio.close()
            await state.close()

    app = FastAPI(
        title="EfficientSAM serving",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # served by gateway/docs, behind the API key when one is configured
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    register_error_handlers(app)
    routers = (
        embed_router,
        segment_router,
        everything_router,
        edges_router,
        embeddings_router,
        health_router,
        docs_router,
        labelstudio_router,
    )
    for router in routers:
        app.include_router(router)
    if settings.ui_enabled:
        app.include_router(ui_router)
    # the document states this deployment's limits and its API key
    app.openapi = functools.partial(deployment_openapi, app, settings)  # type: ignore[method-assign]

    # Added innermost first. From the outside in: request id + metrics + body limit;
    # CORS (its headers reach every answer, 401 and 500 included); the API key, checked
    # from the headers before any body is read; the tenant's priority and rate limit;
    # gzip; unexpected errors → 500.
    app.add_middleware(UnhandledErrorMiddleware)
    # level 1: a 400 KB mask response compresses 3x in 4 ms; level 9 (the default) takes 200 ms
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)
    keys = KeyTable(settings.api_keys, settings.api_keys_file)
    # the key's tenant: its priority header and rate limit, inside the key check
    app.add_middleware(TenancyMiddleware, settings=settings, metrics=metrics)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "HEAD", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Id", "X-Priority"],
            expose_headers=[
                "X-Request-Id",
                "X-Image-Id",
                "X-Image-Width",
                "X-Image-Height",
                "X-Model",
                "X-Cached",
                "X-Masks",
                "X-Candidates",
                "Server-Timing",
                "Retry-After",
            ],
        )
    base64_overhead = settings.max_image_bytes * 4 // 3 + (1 << 20)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=base64_overhead)
    if settings.trace_exporters:
        # outermost: the server span of every request (its route template as name), the
        # parent of the esam.* spans; probes and metrics are not traced
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
        )
    return app
