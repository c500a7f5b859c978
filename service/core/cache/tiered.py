"""L1 (process) in front of Redis (shared). Redis trouble never fails a lookup or a store.

Entries are keyed by content; each also records the tenants that uploaded its image
(``grant``), and a lookup by id (``get_for``, ``holds``) finds only a tenant's own. A
tenant not noted in L1 is looked up in Redis before anything else is read, so that
another tenant's entry and an unknown one are answered alike, after one round trip.

A DELETE (``release``) is the exception to "Redis trouble never fails": it must reach
every replica, so it fails (:class:`CacheUnavailableError`, 503) when Redis cannot
confirm it.
"""

from __future__ import annotations

import logging
from typing import Literal

from service.core.cache.invalidation import InvalidationListener
from service.core.cache.memory import MemoryCache
from service.core.cache.notes import NoteStore
from service.core.cache.redis_tier import RedisTier, RedisUnavailableError
from service.core.cache.single_flight import Produce, ReplicaFlight
from service.core.embedding import Embedding
from service.core.metrics import Metrics
from service.core.tracing import tracer
from service.errors import CacheUnavailableError

log = logging.getLogger(__name__)

RedisStatus = Literal["disabled", "ok", "down"]


class EmbeddingCache:
    def __init__(
        self,
        l1: MemoryCache,
        redis: RedisTier | None,
        metrics: Metrics,
        *,
        lock_wait_s: float = 10.0,
    ) -> None:
        self.l1 = l1
        self.redis = redis
        self._metrics = metrics
        self._redis_was_up = True
        self.invalidations = InvalidationListener(redis, l1, metrics) if redis is not None else None
        self._flight = (
            ReplicaFlight(redis, self.get, self.put, metrics, lock_wait_s)
            if redis is not None
            else None
        )
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

    async def _redis_get(self, key: str, tenant: str | None = None) -> tuple[Embedding | None, str]:
        """From Redis into L1 (noting ``tenant`` as a holder, when Redis said so)."""
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
            tenants = frozenset({tenant}) if tenant else frozenset()
            self.l1.set(key, embedding, fetched_at=fetched_at, tenants=tenants)
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

    async def produce_once(self, key: str, produce: Produce) -> Embedding:
        """``produce()`` the entry and store it, or take the one another replica produced
        meanwhile (cross-replica single flight over Redis; with no Redis, just produce)."""
        if self._flight is None:
            embedding = await produce()
            await self.put(key, embedding)
            return embedding
        return await self._flight.run(key, produce)

    def notes(self, namespace: str) -> NoteStore:
        """A store of small notes beside the embeddings, on the same tiers and TTL."""
        return NoteStore(namespace, self.l1.ttl_s, self.redis)

    async def get_for(self, key: str, tenant: str) -> Embedding | None:
        """The entry, if ``tenant`` holds it (else None, exactly as for an unknown key)."""
        local = self.l1.get_for(key, tenant)
        if local is not None:
            self._metrics.cache_lookups.labels("l1", "hit").inc()
            return local
        self._metrics.cache_lookups.labels("l1", "miss").inc()
        if self.redis is None or not self.redis.available:
            return None
        with tracer.start_as_current_span("esam.cache.lookup") as span:
            try:
                held = await self.redis.holds(key, tenant)
            except RedisUnavailableError as exc:
                self._redis_error("holds", exc)
                return None
            embedding, outcome = None, "miss"
            if held:
                embedding = self.l1.get(key)
                if embedding is not None:
                    self.l1.grant(key, tenant)
                    outcome = "hit"
                else:
                    embedding, outcome = await self._redis_get(key, tenant)
            span.set_attributes({"esam.cache.tier": "redis", "esam.cache.outcome": outcome})
        self._metrics.cache_lookups.labels("redis", outcome).inc()
        return embedding

    async def holds(self, key: str, tenant: str) -> bool:
        """Whether ``tenant`` holds a live entry ``key``."""
        if self.l1.holds(key, tenant):
            return True
        if self.redis is None or not self.redis.available:
            return False
        try:
            return await self.redis.holds(key, tenant) and await self.redis.exists(key)
        except RedisUnavailableError as exc:
            self._redis_error("holds", exc)
            return False

    async def grant(self, key: str, tenant: str) -> None:
        """Record that ``tenant`` uploaded the image of ``key`` (already stored)."""
        if self.l1.holds(key, tenant):
            return
        self.l1.grant(key, tenant)
        if self.redis is None or not self.redis.available:
            return
        try:
            await self.redis.grant(key, tenant)
        except RedisUnavailableError as exc:
            self._redis_error("grant", exc)
        else:
            self._redis_ok()

    async def release(self, key: str, tenant: str) -> None:
        """``tenant``'s DELETE: its access goes on every replica (the entry too when no
        tenant holds it any more), or :class:`CacheUnavailableError`."""
        still_held = self.l1.revoke(key, tenant)
        if self.redis is None:
            if not still_held:
                self.l1.delete(key)
            return
        self.l1.delete(key)  # the next lookup here asks Redis who holds it
        try:
            await self.redis.release(key, tenant)
        except RedisUnavailableError as exc:
            self._redis_error("delete", exc)
            raise CacheUnavailableError(
                "the shared cache (Redis) could not confirm the delete; other replicas may "
                "still hold the embedding: retry",
                retry_after_s=max(1, int(self.redis.retry_s + 0.999)),
            ) from exc
        self._redis_ok()

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
