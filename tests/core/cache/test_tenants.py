"""Tenant visibility at the cache's own level: an entry stored once by content, seen only
by the tenants that uploaded its image, across two replicas on a real Redis and in a
single process without one; a tenant's DELETE takes only its own access."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis

from service.core.cache import EmbeddingCache, MemoryCache
from service.core.embedding import Embedding
from service.core.metrics import Metrics
from tests.services import RedisServer, redis_tier


def embedding(seed: int) -> Embedding:
    array = np.random.default_rng(seed).standard_normal((1, 256, 64, 64)).astype(np.float16)
    return Embedding(array, 640, 480)


def on_redis(url: str, prefix: str) -> EmbeddingCache:
    tier = redis_tier(url, prefix, timeout_s=0.5)
    cache = EmbeddingCache(MemoryCache(64 << 20, 60), tier, Metrics())
    cache.start()
    return cache


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[EmbeddingCache, EmbeddingCache, str]]:
    server = RedisServer(tmp_path)
    server.start()
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    first, second = on_redis(server.url, prefix), on_redis(server.url, prefix)
    try:
        for cache in (first, second):
            assert cache.invalidations is not None
            await asyncio.wait_for(cache.invalidations.subscribed.wait(), 5)
        yield first, second, server.url
    finally:
        await first.close()
        await second.close()
        server.stop()


async def eventually_none(cache: EmbeddingCache, key: str, tenant: str) -> None:
    deadline = time.monotonic() + 3
    while await cache.get_for(key, tenant) is not None:
        assert time.monotonic() < deadline, f"{tenant} still sees {key}"
        await asyncio.sleep(0.02)


async def test_only_the_uploading_tenant_sees_an_entry_on_any_replica(
    replicas: tuple[EmbeddingCache, EmbeddingCache, str],
) -> None:
    first, second, _ = replicas
    stored = embedding(1)
    await first.put("img", stored)
    await first.grant("img", "acme")
    for cache in (first, second):
        found = await cache.get_for("img", "acme")
        assert found is not None
        assert np.array_equal(found.as_float(), stored.as_float())
        assert await cache.holds("img", "acme")
        assert await cache.get_for("img", "globex") is None  # as for an unknown key
        assert not await cache.holds("img", "globex")
        assert await cache.get_for("unknown", "globex") is None
    # second has the entry in its L1 now: globex is still refused there
    assert second.l1.get("img") is not None
    assert await second.get_for("img", "globex") is None


async def test_a_delete_takes_the_callers_access_and_the_entry_with_the_last(
    replicas: tuple[EmbeddingCache, EmbeddingCache, str],
) -> None:
    first, second, url = replicas
    await first.put("img", embedding(2))
    await first.grant("img", "acme")
    await second.grant("img", "globex")  # the same image from another tenant: no new entry
    assert await first.get_for("img", "globex") is not None
    assert await second.get_for("img", "acme") is not None

    await second.release("img", "acme")  # acme's DELETE, through the other replica
    for cache in (first, second):
        await eventually_none(cache, "img", "acme")
        assert await cache.get_for("img", "globex") is not None  # globex keeps its access
    raw = redis.Redis.from_url(url)
    try:
        assert first.redis is not None
        assert raw.exists(first.redis.key("img"))

        await first.release("img", "intruder")  # a tenant that never held it: no change
        assert await second.get_for("img", "globex") is not None

        await first.release("img", "globex")  # the last holder: the entry goes
        for cache in (first, second):
            await eventually_none(cache, "img", "globex")
        assert first.redis is not None
        assert not raw.exists(first.redis.key("img"))
        assert not raw.exists(first.redis.tenants_key("img"))
    finally:
        raw.close()


async def test_without_redis_the_process_keeps_who_holds_what() -> None:
    cache = EmbeddingCache(MemoryCache(64 << 20, 60), None, Metrics())
    await cache.put("img", embedding(3))
    await cache.grant("img", "acme")
    assert await cache.get_for("img", "acme") is not None
    assert await cache.get_for("img", "globex") is None
    await cache.grant("img", "globex")
    await cache.release("img", "acme")
    assert await cache.get_for("img", "acme") is None
    assert await cache.get_for("img", "globex") is not None
    await cache.release("img", "globex")
    assert cache.l1.get("img") is None  # no holder left: gone
