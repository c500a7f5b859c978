"""L1 (process) in front of Redis (shared). Redis trouble never fails a lookup or a store.

A DELETE is the exception: it must reach every replica, so it fails
(:class:`CacheUnavailableError`, 503) when Redis cannot confirm it.
"""

from __future__ import annotations

import logging
from typing import Literal

from service.core.cache.invalidation import InvalidationListener
from service.core.cache.memory import MemoryCache
from service.core.cache.redis_tier import RedisTier, RedisUnavailableError
from service.core.embedding import Embedding
from service.core.metrics import Metrics
from service.core.tracing import tracer
from service.errors import CacheUnavailableError

log = logging.getLogger(__name__)

RedisStatus = Literal["disabled", "ok", "down"]


class EmbeddingCache:
    def __init__(self, l1: MemoryCache, redis: RedisTier | None, metrics: Metrics) -> None:
        self.l1 = l1
        self.redis = redis
        self._metrics = metrics
        self._redis_was_up = True
        self.invalidations = InvalidationListener(redis, l1, metrics) if redis is not None else None
        metrics.redis_up.set(1 if redis is not None else 0)

    def start(self) -> None:
        if self.invalidations is not None:
            self.invalidations.start()

    def _redis_error(self, op: str, exc: RedisUnavailableError) -> None:
        self._metrics.redis_errors.labels(op).inc()
        self._metrics.redis_up.set(0)
        if self._redis_was_up:
            log.warning("redis unavailable (%s: %s): serving without the shared cache", op, exc)
        self._redis_was_up = False

    def _redis_ok(self) -> None:
        if not self._redis_was_up:
            log.info("redis is back: shared cache in use again")
        self._redis_was_up = True
        self._metrics.redis_up.set(1)

    async def get(self, key: str) -> Embedding | None:
        with tracer.start_as_current_span("esam.cache.lookup") as span:
            embedding = self.l1.get(key)
            outcome = "hit" if embedding else "miss"
            span.set_attributes({"esam.cache.tier": "l1", "esam.cache.outcome": outcome})
        self._metrics.cache_lookups.labels("l1", outcome).inc()
        if embedding is not None or self.redis is None:
            return embedding
        with tracer.start_as_current_span("esam.cache.lookup") as span:
            embedding, outcome = await self._redis_get(key)
            span.set_attributes({"esam.cache.tier": "redis", "esam.cache.outcome": outcome})
        self._metrics.cache_lookups.labels("redis", outcome).inc()
        return embedding

    async def _redis_get(self, key: str) -> tuple[Embedding | None, str]:
        assert self.redis is not None
        if not self.redis.available:
            return None, "error"
        fetched_at = self.l1.generation
        try:
            embedding = await self.redis.get(key)
        except RedisUnavailableError as exc:
            self._redis_error("get", exc)
            return None, "error"
        self._redis_ok()
        if embedding is not None:  # unless a DELETE arrived while it was on its way
            self.l1.set(key, embedding, fetched_at=fetched_at)
        return embedding, "hit" if embedding else "miss"

    async def put(self, key: str, embedding: Embedding) -> None:
        with tracer.start_as_current_span("esam.cache.store") as span:
            self.l1.set(key, embedding)
            if self.redis is None or not self.redis.available:
                span.set_attribute("esam.cache.tier", "l1")
                return
            span.set_attribute("esam.cache.tier", "l1+redis")
            try:
                await self.redis.set(key, embedding)
            except RedisUnavailableError as exc:
                self._redis_error("set", exc)
            else:
                self._redis_ok()

    async def delete(self, key: str) -> None:
        """Delete on every replica, or raise :class:`CacheUnavailableError`."""
        self.l1.delete(key)
        if self.redis is None:
            return
        try:
            await self.redis.delete_everywhere(key)
        except RedisUnavailableError as exc:
            self._redis_error("delete", exc)
            raise CacheUnavailableError(
                "the shared cache (Redis) could not confirm the delete; other replicas may "
                "still hold the embedding: retry",
                retry_after_s=max(1, int(self.redis.retry_s + 0.999)),
            ) from exc
        self._redis_ok()

    async def contains(self, key: str) -> bool:
        if self.l1.get(key) is not None:
            return True
        if self.redis is None or not self.redis.available:
            return False
        try:
            return await self.redis.exists(key)
        except RedisUnavailableError as exc:
            self._redis_error("exists", exc)
            return False

    async def redis_status(self) -> RedisStatus:
        if self.redis is None:
            return "disabled"
        up = await self.redis.ping()
        if up:
            self._redis_ok()
        return "ok" if up else "down"

    async def close(self) -> None:
        if self.invalidations is not None:
            await self.invalidations.close()
        if self.redis is not None:
            await self.redis.close()
