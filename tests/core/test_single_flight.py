"""Single flight at the embedding service's own level: concurrent requests for one new
image share one encode in a process, and two services on one real Redis share one
encode across replicas; a failed encode is cached nowhere and the next request tries
again. The encoder is a gated stand-in (the thing under test is the service above it)."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.admission import Admission
from service.core.cache import EmbeddingCache, MemoryCache, RedisTier
from service.core.embedding import image_id_of
from service.core.embedding_service import EmbeddingService
from service.core.encoders import EncodedImage
from service.core.metrics import Metrics
from service.errors import EncoderUnavailableError
from service.model.preprocess import ImageHeader
from tests.services import RedisServer, redis_tier


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


class GatedEncoder:
    """Encodes when ``gate`` opens; counts its calls; fails while ``failing``."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.failing = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ready(self) -> bool:
        return True

    async def encode(self, data: bytes, header: ImageHeader) -> EncodedImage:
        self.calls += 1
        await self.gate.wait()
        if self.failing:
            raise EncoderUnavailableError("the stand-in encoder fails on purpose")
        embedding = np.full((1, 256, 64, 64), float(len(data) % 97), dtype=np.float32)
        return EncodedImage(embedding, header.width, header.height)


def service(
    encoder: GatedEncoder, metrics: Metrics, redis: RedisTier | None = None
) -> EmbeddingService:
    cache = EmbeddingCache(MemoryCache(64 << 20, 60), redis, metrics, lock_wait_s=10)
    return EmbeddingService(
        encoder=encoder,
        cache=cache,
        metrics=metrics,
        model_id="test-model",
        dtype="float16",
        admission=Admission(8, metrics),
        max_image_bytes=1 << 20,
        max_image_pixels=1 << 20,
    )


def waits(metrics: Metrics, scope: str) -> float:
    value = metrics.registry.get_sample_value("esam_singleflight_waits_total", {"scope": scope})
    return float(value or 0.0)


async def test_concurrent_requests_share_one_encode_in_a_process() -> None:
    encoder, metrics = GatedEncoder(), Metrics()
    embeddings = service(encoder, metrics)
    image = png(1)
    requests = [asyncio.create_task(embeddings.embed(image, tenant="default")) for _ in range(5)]
    await asyncio.sleep(0.05)  # every request is waiting on the one encode
    assert encoder.calls == 1
    encoder.gate.set()
    results = await asyncio.gather(*requests)
    assert encoder.calls == 1
    assert len({r.image_id for r in results}) == 1
    assert waits(metrics, "process") == 4
    assert [r.cached for r in results] == [False] * 5  # each waited for the one encode
    assert embeddings.admission.pending == 0
    assert (await embeddings.embed(image, tenant="default")).cached  # a hit now, no encode
    assert encoder.calls == 1


async def test_a_failed_encode_fails_its_waiters_caches_nothing_and_is_tried_again() -> None:
    encoder, metrics = GatedEncoder(), Metrics()
    embeddings = service(encoder, metrics)
    image = png(2)
    encoder.failing = True
    requests = [asyncio.create_task(embeddings.embed(image, tenant="default")) for _ in range(3)]
    await asyncio.sleep(0.05)
    encoder.gate.set()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(o, EncoderUnavailableError) for o in outcomes), outcomes
    assert encoder.calls == 1
    assert await embeddings.lookup(image_id_of(image), tenant="default") is None
    assert embeddings.admission.pending == 0  # the slot came back
    encoder.failing = False
    result = await embeddings.embed(image, tenant="default")
    assert not result.cached
    assert encoder.calls == 2


@pytest.fixture
def redis_server(tmp_path: Path) -> RedisServer:
    server = RedisServer(tmp_path)
    server.start()
    return server


async def test_two_replicas_on_one_redis_share_one_encode(redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"

    def tier() -> RedisTier:
        return redis_tier(redis_server.url, prefix, timeout_s=0.5, retry_s=1, lock_ttl_s=1)

    first_encoder, second_encoder = GatedEncoder(), GatedEncoder()
    first_metrics, second_metrics = Metrics(), Metrics()
    first = service(first_encoder, first_metrics, tier())
    second = service(second_encoder, second_metrics, tier())
    image = png(3)
    try:
        started = asyncio.create_task(first.embed(image, tenant="default"))
        await asyncio.sleep(0.2)  # the first replica holds the lock and encodes
        joined = asyncio.create_task(second.embed(image, tenant="default"))
        await asyncio.sleep(1.5)  # longer than the lock's TTL: it is renewed meanwhile
        first_encoder.gate.set()
        second_encoder.gate.set()
        one, other = await asyncio.gather(started, joined)
        assert one.image_id == other.image_id
        assert first_encoder.calls + second_encoder.calls == 1
        assert waits(second_metrics, "redis_lock") == 1
        assert np.array_equal(one.embedding.array, other.embedding.array)
    finally:
        for embeddings in (first, second):
            await embeddings.cache.close()
        redis_server.stop()
