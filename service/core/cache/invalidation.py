"""Cross-replica DELETE: Redis pub/sub drops an entry from every replica's in-process tier.

A DELETE removes the tenant from the entry's holders (the entry itself when none is
left), increments ``<prefix>:deletes`` and publishes the cache key on
``<prefix>:invalidate`` (``RedisTier.release``); every gateway listens on that channel
and drops the key (its embedding and the tenants noted for it) from its in-process
tier at once: its next lookup asks Redis.

Pub/sub does not queue messages for a listener that is disconnected. So when the
subscription is re-established, the listener compares the delete counter with what
it has seen (the counter when it subscribed plus the messages since): if any delete
may have been missed, the in-process tier is cleared. A Redis outage without
deletes (none can be confirmed while Redis is down: DELETE answers 503) keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from service.core.cache.memory import MemoryCache
from service.core.cache.redis_client import close_client
from service.core.cache.redis_tier import RedisTier
from service.core.metrics import Metrics

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.25  # how often the listening loop looks at its stop flag


class InvalidationListener:
    def __init__(self, redis: RedisTier, l1: MemoryCache, metrics: Metrics) -> None:
        self._redis = redis
        self._l1 = l1
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._expected: int | None = None  # the delete counter as far as this replica knows
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cache invalidation listener")

    async def close(self) -> None:
        """Stop listening. The loop checks a flag between reads: a cancellation can be lost
        inside redis-py's read timeouts, so it is only the fallback."""
        self.subscribed.clear()
        if self._task is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 2 * _READ_TIMEOUT_S)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._stopping = False

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._listen()
            except (RedisError, OSError, TimeoutError) as exc:
                if self.subscribed.is_set():
                    log.warning("cache invalidation channel lost (%s); resubscribing", exc)
                self.subscribed.clear()
            if not self._stopping:
                await asyncio.sleep(max(self._redis.retry_s, 0.1))

    async def _listen(self) -> None:
        client = self._redis.listener_client()
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(self._redis.invalidation_channel)
                confirmed = None
                while confirmed is None or confirmed["type"] != "subscribe":
                    confirmed = await pubsub.get_message(timeout=5.0)
                    if confirmed is None:
                        raise TimeoutError("no confirmation of the subscription")
                # subscribed: every delete from now on arrives as a message
                deletes = await self._redis.deletes_seen()
                if self._expected is not None and deletes != self._expected:
                    self._l1.clear()  # a delete may have been missed while away
                    self._metrics.cache_invalidations.labels("resync").inc()
                    log.info("deletes happened while unsubscribed: in-process tier cleared")
                self._expected = deletes
                self.subscribed.set()
                while not self._stopping:
                    message = await pubsub.get_message(timeout=_READ_TIMEOUT_S)
                    if message is not None and message["type"] == "message":
                        key = message["data"]
                        self._l1.delete(key.decode() if isinstance(key, bytes) else str(key))
                        self._expected += 1
                        self._metrics.cache_invalidations.labels("message").inc()
        finally:
            await close_client(client)
