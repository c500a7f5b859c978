"""L1 (process) in front of Redis (shared). Redis trouble never fails a request."""

from __future__ import annotations

import logging
from typing import Literal

from service.core.cache.memory import MemoryCache
from service.core.cache.redis_tier import RedisTier, RedisUnavailableError
from service.core.embedding import Embedding
from service.core.metrics import Metrics

log = logging.getLogger(__name__)

RedisStatus = Literal["disabled", "ok", "down"]


class EmbeddingCache:
    def __init__(self, l1: MemoryCache, redis: RedisTier | None, metrics: Metrics) -> None:
        self.l1 = l1
        self.redis = redis
        self._metrics = metrics
        self._redis_was_up = True
        metrics.redis_up.set(1 if redis is not None else 0)

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
        embedding = self.l1.get(key)
        self._metrics.cache_lookups.labels("l1", "hit" if embedding else "miss").inc()
        if embedding is not None or self.redis is None:
            return embedding
        if not self.redis.available:
            self._metrics.cache_lookups.labels("redis", "error").inc()
            return None
        try:
            embedding = await self.redis.get(key)
        except RedisUnavailableError as exc:
            self._metrics.cache_lookups.labels("redis", "error").inc()
            self._redis_error("get", exc)
            return None
        self._redis_ok()
        self._metrics.cache_lookups.labels("redis", "hit" if embedding else "miss").inc()
        if embedding is not None:
            self.l1.set(key, embedding)
        return embedding

    async def put(self, key: str, embedding: Embedding) -> None:
        self.l1.set(key, embedding)
        if self.redis is None or not self.redis.available:
            return
        try:
            await self.redis.set(key, embedding)
        except RedisUnavailableError as exc:
            self._redis_error("set", exc)
        else:
            self._redis_ok()

    async def delete(self, key: str) -> None:
        self.l1.delete(key)
        if self.redis is None:
            return
        try:
            await self.redis.delete(key)
        except RedisUnavailableError as exc:
            self._redis_error("delete", exc)

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
        if self.redis is not None:
            await self.redis.close()
