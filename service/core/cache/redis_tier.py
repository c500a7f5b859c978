"""The shared Redis tier: bounded timeouts, and bypassed for a while after a failure.

Every Redis failure is turned into :class:`RedisUnavailableError` here; the
tiered cache above counts it and carries on without the shared tier. While
the tier is marked down (``retry_s`` after a failure) no call waits on Redis.

Expected server settings: ``maxmemory`` sized for the working set and
``maxmemory-policy allkeys-lru`` (entries also carry a TTL), no persistence
needed (``save ""``, ``appendonly no``): the cache can always be rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from service.core.cache.redis_client import RedisTarget, close_client, is_cluster, make_client
from service.core.embedding import CorruptEmbeddingError, Embedding


class RedisUnavailableError(Exception):
    """Redis could not be used for this operation."""


class RedisTier:
    """The shared tier on one Redis, Cluster or Sentinel-watched master."""

    def __init__(
        self,
        target: RedisTarget,
        *,
        prefix: str,
        ttl_s: int,
        timeout_s: float,
        retry_s: float,
        lock_ttl_s: float,
    ) -> None:
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.retry_s = retry_s
        self.lock_ttl_s = lock_ttl_s
        self.target = target
        self.timeout_s = timeout_s
        # a pooled connection that broke (Redis restarted, failed over) is reconnected and
        # the command sent once more; a timeout is not retried: a hung Redis costs one timeout
        self._client = make_client(target, timeout_s=timeout_s)
        self._cluster = is_cluster(self._client)
        self._listeners = 0
        self._down_until = 0.0

    # --- availability -------------------------------------------------------------
    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> RedisUnavailableError:
        self._down_until = time.monotonic() + self.retry_s
        return RedisUnavailableError(f"{type(exc).__name__}: {exc}")

    async def call(
        self, operation: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """Run one Redis command (or a few, in a coroutine function); any failure marks the
        tier down for ``retry_s`` and raises :class:`RedisUnavailableError`."""
        if not self.available:
            raise RedisUnavailableError("bypassed after a recent failure")
        try:
            return await operation(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from exc

    @property
    def client(self) -> Any:
        """The redis-py client (standalone, Cluster or Sentinel's master: see redis_client),
        for a command sent through :meth:`call`."""
        return self._client

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        await close_client(self._client)

    # --- data -----------------------------------------------------------------------
    def key(self, key: str) -> str:
        return f"{self.prefix}:emb:{key}"

    async def get(self, key: str) -> Embedding | None:
        raw = await self.call(self._client.get, self.key(key))
        if not isinstance(raw, bytes):
            return None
        try:
            return Embedding.from_bytes(raw)
        except CorruptEmbeddingError:
            await self.delete(key)
            return None

    async def set(self, key: str, embedding: Embedding) -> None:
        await self.call(self._client.set, self.key(key), embedding.to_bytes(), ex=self.ttl_s)

    async def delete(self, key: str) -> None:
        await self.call(self._client.delete, self.key(key))

    # --- which tenants hold an entry: a set beside it, with the same TTL ---------------
    def tenants_key(self, key: str) -> str:
        return f"{self.prefix}:who:{key}"

    async def holds(self, key: str, tenant: str) -> bool:
        """Whether ``tenant`` uploaded the image of ``key`` (the entry may have expired)."""
        return bool(await self.call(self._client.sismember, self.tenants_key(key), tenant))

    async def grant(self, key: str, tenant: str) -> None:
        """Record that ``tenant`` holds ``key``, for the cache's TTL from now."""

        async def add() -> None:
            await self._client.sadd(self.tenants_key(key), tenant)
            await self._client.expire(self.tenants_key(key), self.ttl_s)

        await self.call(add)

    async def release(self, key: str, tenant: str) -> None:
        """``tenant`` gives up ``key``; the entry goes when no tenant holds it any more.
        Either way every replica is told to drop its copy (its next lookup asks Redis),
        so that the answer takes as long whether or not the tenant held it.

        Commands one after another (the set, the entry and the counter may live in
        different Cluster slots); a failure between them answers 503 and the client's
        retry repeats them (each is idempotent enough). A tenant's upload racing the last
        holder's delete may lose the entry: a cache miss, never another tenant's access.
        """

        async def in_turn() -> None:
            await self._client.srem(self.tenants_key(key), tenant)
            if not await self._client.scard(self.tenants_key(key)):
                await self._client.delete(self.key(key))
                await self._client.delete(self.tenants_key(key))
            await self._client.incr(self.deletes_key)
            await self._client.publish(self.invalidation_channel, key)

        await self.call(in_turn)

    @property
    def invalidation_channel(self) -> str:
        return f"{self.prefix}:invalidate"

    @property
    def deletes_key(self) -> str:
        """A counter of every delete ever published (to tell whether a listener missed one)."""
        return f"{self.prefix}:deletes"

    async def deletes_seen(self) -> int:
        """The delete counter (on a Cluster, on whichever node holds its slot)."""
        return int(await self._client.get(self.deletes_key) or 0)

    def listener_client(self) -> Any:
        """A client for a long-lived subscription: no read timeout, periodic health checks
        (on a Cluster: each new one on the next node)."""
        self._listeners += 1
        return make_client(
            self.target, timeout_s=self.timeout_s, listener=True, attempt=self._listeners
        )

    async def exists(self, key: str) -> bool:
        return bool(await self.call(self._client.exists, self.key(key)))

    # --- cross-replica single flight ------------------------------------------------
    def lock(self, key: str) -> EncodeLock:
        return EncodeLock(self, key)

    def _lock_object(self, key: str) -> Lock:
        lock: Lock = self._client.lock(
            f"{self.prefix}:lock:{key}", timeout=self.lock_ttl_s, blocking=False
        )
        return lock

    async def lock_held(self, key: str) -> bool:
        return bool(await self.call(self._client.exists, f"{self.prefix}:lock:{key}"))


class EncodeLock:
    """``async with tier.lock(key) as owned``: ``owned`` is False when another replica holds it.

    A Redis failure counts as owning the lock (encode locally rather than wait). While
    it is held, the lock's TTL is renewed every third of it: an encode that takes longer
    than the TTL keeps its lock, and a crashed replica's lock is gone within one TTL.
    """

    def __init__(self, tier: RedisTier, key: str) -> None:
        self._tier = tier
        self._lock = tier._lock_object(key)
        self._owned = False
        self._renewal: asyncio.Task[None] | None = None

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._tier.lock_ttl_s / 3)
            try:
                await self._lock.reacquire()
            except (LockError, RedisError, OSError, TimeoutError):
                return  # expired or Redis gone: nothing left to keep

    async def __aenter__(self) -> bool:
        if not self._tier.available:
            return True
        try:
            self._owned = bool(await self._lock.acquire())
        except (TimeoutError, RedisError, OSError) as exc:
            self._tier._failed(exc)
            return True
        if self._owned:
            self._renewal = asyncio.create_task(self._renew(), name="renew encode lock")
        return self._owned

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._owned:
            return
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        with contextlib.suppress(LockError, RedisError, OSError, TimeoutError):
            await self._lock.release()  # expired or Redis gone: the TTL cleans up
