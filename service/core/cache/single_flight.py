"""One encode per image across replicas: a Redis lock around "produce, then store".

The replica that takes the lock produces the embedding and stores it before the lock
goes (its TTL renewed while it works: ``RedisTier.lock``); the others poll the cache
until the entry lands or the lock is gone, then produce it themselves only if it did
not land. Redis being down (or answering too slowly to take the lock) means "produce
here": a replica never waits on a Redis it cannot reach.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service.core.cache.redis_tier import RedisTier, RedisUnavailableError
from service.core.embedding import Embedding
from service.core.metrics import Metrics
from service.core.tracing import tracer

log = logging.getLogger(__name__)

_POLL_S = 0.05

#: produces the embedding of one key (an encode)
Produce = Callable[[], Awaitable[Embedding]]
#: the cache's lookup by key (both tiers) and its store
Lookup = Callable[[str], Awaitable[Embedding | None]]
Store = Callable[[str, Embedding], Awaitable[None]]


class ReplicaFlight:
    def __init__(
        self, tier: RedisTier, lookup: Lookup, store: Store, metrics: Metrics, wait_s: float
    ) -> None:
        self._tier = tier
        self._lookup = lookup
        self._store = store
        self._metrics = metrics
        self._wait_s = wait_s

    async def run(self, key: str, produce: Produce) -> Embedding:
        async with self._tier.lock(key) as owned:
            if not owned:
                self._metrics.singleflight_waits.labels("redis_lock").inc()
                with tracer.start_as_current_span("esam.singleflight.wait") as span:
                    span.set_attribute("esam.singleflight.scope", "redis_lock")
                    peer = await self._wait_for_peer(key)
                if peer is not None:
                    return peer
            else:
                done = await self._lookup(key)  # a peer may have finished just before
                if done is not None:
                    return done
            embedding = await produce()
            await self._store(key, embedding)  # before the lock goes: peers poll for it
            return embedding

    async def _wait_for_peer(self, key: str) -> Embedding | None:
        """Another replica is producing: poll the cache until it lands or the lock goes."""
        deadline = time.monotonic() + self._wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
            found = await self._lookup(key)
            if found is not None:
                return found
            try:
                if not await self._tier.lock_held(key):
                    return await self._lookup(key)
            except RedisUnavailableError:  # Redis gone: stop waiting, produce here
                return None
        log.warning("waited %.1fs for another replica to encode %s", self._wait_s, key)
        return None
