"""The tiered cache at its own level: L1 in front of a real Redis, Redis's failure policy
(bypassed for ``retry_s`` after a failure, a delete refused when it cannot be confirmed),
and cross-replica invalidation between two caches on one Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis

from service.core.cache import EmbeddingCache, MemoryCache, RedisTier
from service.core.embedding import Embedding
from service.core.metrics import Metrics
from service.errors import CacheUnavailableError
from tests.services import RedisServer, redis_tier

RETRY_S = 0.5


def embedding(seed: int) -> Embedding:
    array = np.random.default_rng(seed).standard_normal((1, 256, 64, 64)).astype(np.float16)
    return Embedding(array, 640, 480)


def tier(url: str, prefix: str) -> RedisTier:
    return redis_tier(url, prefix, retry_s=RETRY_S)


async def cache_on(url: str, prefix: str, metrics: Metrics | None = None) -> EmbeddingCache:
    cache = EmbeddingCache(MemoryCache(64 << 20, 60), tier(url, prefix), metrics or Metrics())
    cache.start()
    return cache


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def redis_server(tmp_path: Path) -> RedisServer:
    server = RedisServer(tmp_path)
    server.start()
    return server


@pytest.fixture
async def cache(redis_server: RedisServer, metrics: Metrics) -> AsyncIterator[EmbeddingCache]:
    cache = await cache_on(redis_server.url, f"t-{uuid.uuid4().hex[:8]}", metrics)
    try:
        yield cache
    finally:
        await cache.close()
        redis_server.stop()


def lookups(metrics: Metrics, tier_name: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "esam_cache_lookups_total", {"tier": tier_name, "outcome": outcome}
    )
    return float(value or 0.0)


async def test_a_redis_hit_fills_the_local_tier(cache: EmbeddingCache, metrics: Metrics) -> None:
    stored = embedding(1)
    await cache.put("a", stored)
    cache.l1.delete("a")  # as on another replica: only Redis has it
    found = await cache.get("a")
    assert found is not None
    assert np.array_equal(found.array, stored.array)
    assert (found.width, found.height) == (640, 480)
    assert lookups(metrics, "redis", "hit") == 1
    again = await cache.get("a")
    assert again is not None
    assert lookups(metrics, "l1", "hit") == 1  # from L1 now: Redis not asked again
    assert lookups(metrics, "redis", "hit") == 1


async def test_redis_down_is_bypassed_not_waited_on_and_used_again_once_back(
    cache: EmbeddingCache, redis_server: RedisServer, metrics: Metrics
) -> None:
    await cache.put("kept", embedding(2))
    redis_server.stop()
    cache.l1.delete("kept")
    assert await cache.get("kept") is None  # a miss, not an error
    assert await cache.redis_status() == "down"
    # marked down for retry_s: the next calls do not go to Redis at all (no error counted)
    assert cache.redis is not None
    assert not cache.redis.available
    stored = embedding(3)
    for i in range(20):
        await cache.put(f"local-{i}", stored)
        assert await cache.get("absent") is None
    assert cache.l1.get("local-0") is not None  # stores still reach the local tier
    for op in ("get", "set"):
        errors = metrics.registry.get_sample_value("esam_redis_errors_total", {"op": op})
        assert errors == (1 if op == "get" else None), op  # the first failure only
    # a delete must reach every replica: refused while it cannot be confirmed
    with pytest.raises(CacheUnavailableError) as refused:
        await cache.release("kept", "default")
    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s >= 1

    redis_server.start()
    await asyncio.sleep(RETRY_S + 0.1)
    await cache.put("after", embedding(4))
    assert await cache.redis_status() == "ok"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.exists(cache.redis.key("after"))
    finally:
        client.close()


async def test_a_corrupt_record_is_a_miss_and_is_removed(
    cache: EmbeddingCache, redis_server: RedisServer
) -> None:
    assert cache.redis is not None
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set(cache.redis.key("bad"), b"not an embedding record")
        assert await cache.get("bad") is None
        assert not client.exists(cache.redis.key("bad"))
    finally:
        client.close()


async def test_a_delete_on_one_replica_empties_the_others_local_tier(
    redis_server: RedisServer,
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    first, second = (
        await cache_on(redis_server.url, prefix),
        await cache_on(redis_server.url, prefix),
    )
    try:
        await first.put("shared", embedding(5))
        await first.grant("shared", "default")
        assert await second.get("shared") is not None  # now in second's L1 too
        assert second.invalidations is not None
        await asyncio.wait_for(second.invalidations.subscribed.wait(), 5)
        await first.release("shared", "default")
        deadline = time.monotonic() + 2
        while second.l1.get("shared") is not None:
            assert time.monotonic() < deadline, "the other replica kept its copy"
            await asyncio.sleep(0.02)
        assert await second.get("shared") is None  # and not in Redis either
    finally:
        await first.close()
        await second.close()
        redis_server.stop()
