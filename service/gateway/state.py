"""The serving objects, built once at start-up and shared by every request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request

from service.core.admission import Admission
from service.core.cache import EmbeddingCache, MemoryCache, RedisTier
from service.core.cache.redis_client import RedisTarget
from service.core.decoders import Decoder, LocalDecoder
from service.core.embedding_service import EmbeddingService
from service.core.encoders import Encoder, LocalEncoder
from service.core.loading import LoadedModel
from service.core.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServingState:
    settings: Settings
    metrics: Metrics
    loaded: LoadedModel
    encoder: Encoder
    embeddings: EmbeddingService
    decoder: Decoder
    #: the embeddings' tiers (the service's own, for readiness and adapters' notes)
    cache: EmbeddingCache
    draining: bool = False  # set when the server starts shutting down: /readyz turns 503

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    async def close(self) -> None:
        await self.decoder.close()
        await self.encoder.close()
        await self.cache.close()


#: builds the encoder for these settings (``build_encoder`` by default; another
#: :class:`~service.core.encoders.Encoder` can be put in its place by ``build_app``)
EncoderBuilder = Callable[[Settings, LoadedModel, Metrics], Encoder]


def build_encoder(settings: Settings, loaded: LoadedModel, metrics: Metrics) -> Encoder:
    """The encoder the settings name: Triton's pool, or the in-process model."""
    if settings.encoder == "triton":
        from service.core.encoders.triton import TritonEncoder

        return TritonEncoder(
            settings.triton_url,
            model_name=settings.triton_model,
            timeout_s=settings.encode_timeout_s,
            resolve_s=settings.triton_resolve_s,
            shared_memory=settings.triton_shared_memory == "system",
            metrics=metrics,
        )
    model = loaded.model
    if settings.encoder_device != settings.decoder_device:
        from service.model import build_model

        model = build_model(loaded.model.state_dict(), loaded.model.config.variant)
        model = model.to(settings.encoder_device)
    return LocalEncoder(
        model,
        precision=settings.encoder_precision,
        max_batch=settings.encoder_max_batch,
        timeout_s=settings.encode_timeout_s,
        max_concurrent_decodes=settings.max_concurrent_image_decodes,
        max_image_pixels=settings.max_image_pixels,
        metrics=metrics,
    )


def build_decoder(
    settings: Settings, loaded: LoadedModel, metrics: Metrics, encoder: Encoder
) -> Decoder:
    """The decoder the settings name; in Triton it shares the encoder's endpoints (their
    breakers and probes) when the encoder is there too."""
    local = LocalDecoder(
        loaded.model,
        max_concurrency=settings.max_concurrent_decodes,
        metrics=metrics,
        max_everything_jobs=settings.max_everything_jobs,
        everything_memory_bytes=settings.everything_memory_mb << 20,
        interactive_share=settings.interactive_share,
    )
    if settings.decoder == "local":
        return local
    from service.core.decoders.triton import TritonDecoder
    from service.core.encoders.triton import TritonEncoder

    if isinstance(encoder, TritonEncoder):
        pool, owns_pool = encoder, False
    else:
        pool = TritonEncoder(
            settings.triton_url,
            model_name=settings.triton_decoder_model,
            timeout_s=settings.decode_timeout_s,
            resolve_s=settings.triton_resolve_s,
            metrics=metrics,
        )
        owns_pool = True
    return TritonDecoder(
        pool,
        model_id=loaded.model_id,
        model_name=settings.triton_decoder_model,
        timeout_s=settings.decode_timeout_s,
        job_timeout_s=settings.decode_job_timeout_s,
        max_pending=settings.max_pending_decodes,
        metrics=metrics,
        fallback=local,
        owns_pool=owns_pool,
        use_fallback=settings.decoder_fallback,
    )


async def init_state(
    settings: Settings,
    loaded: LoadedModel,
    metrics: Metrics,
    *,
    encoder_builder: EncoderBuilder = build_encoder,
) -> ServingState:
    redis = None
    if settings.cache == "redis":
        redis = RedisTier(
            RedisTarget.parse(
                settings.redis_mode, settings.redis_url, settings.redis_sentinel_master
            ),
            prefix=settings.redis_key_prefix,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.redis_timeout_s,
            retry_s=settings.redis_retry_s,
            lock_ttl_s=settings.lock_ttl_s,
        )
    cache = EmbeddingCache(
        MemoryCache(settings.memory_cache_mb << 20, settings.cache_ttl_s),
        redis,
        metrics,
        lock_wait_s=settings.lock_wait,
    )
    cache.start()
    encoder = encoder_builder(settings, loaded, metrics)
    await encoder.start()
    embeddings = EmbeddingService(
        encoder=encoder,
        cache=cache,
        metrics=metrics,
        model_id=loaded.model_id,
        dtype=settings.embedding_dtype,
        admission=Admission(
            settings.max_pending_encodes,
            metrics,
            interactive_share=settings.interactive_share,
            tenant_limit=lambda tenant: settings.limits_for(tenant).pending_encodes or 0,
        ),
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
    )
    decoder = build_decoder(settings, loaded, metrics, encoder)
    await decoder.start()
    metrics.model_info.labels(
        loaded.model_id, settings.encoder, settings.cache, settings.embedding_dtype
    ).set(1)
    if redis is not None and not await redis.ping():
        log.warning(
            "redis at %s does not answer; starting without the shared cache", settings.redis_url
        )
    return ServingState(settings, metrics, loaded, encoder, embeddings, decoder, cache)


def get_state(request: Request) -> ServingState:
    return cast(ServingState, request.app.state.serving)


State = Annotated[ServingState, Depends(get_state)]
