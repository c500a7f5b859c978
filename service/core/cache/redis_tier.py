"""The shared Redis tier: bounded timeouts, and bypassed for a while after a failure.

Every Redis failure is turned into :class:`RedisUnavailableError` here; the
tiered cache above counts it and carries on without the shared tier. While
the tier is marked down (``retry_s`` after a failure) no call waits on Redis.

Expected server settings: ``maxmemory`` sized for the working set and
``maxmemory-policy allkeys-lru`` (entries also carry a TTL), no persistence
needed (``save ""``, ``appendonly no``): the cache can always be rebuilt.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from service.core.embedding import CorruptEmbeddingError, Embedding


class RedisUnavailableError(Exception):
    """Redis could not be used for this operation."""


class RedisTier:
    name = "redis"

    def __init__(
        self,
        url: str,
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
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._down_until = 0.0

    # --- availability -------------------------------------------------------------
    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> RedisUnavailableError:
        self._down_until = time.monotonic() + self.retry_s
        return RedisUnavailableError(f"{type(exc).__name__}: {exc}")

    async def _call(
        self, operation: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """Run one Redis command; any failure marks the tier down for ``retry_s``."""
        if not self.available:
            raise RedisUnavailableError("bypassed after a recent failure")
        try:
            return await operation(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._failed(exc) from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except (TimeoutError, RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._client.aclose()

    # --- data -----------------------------------------------------------------------
    def key(self, key: str) -> str:
        return f"{self.prefix}:emb:{key}"

    async def get(self, key: str) -> Embedding | None:
        raw = await self._call(self._client.get, self.key(key))
        if not isinstance(raw, bytes):
            return None
        try:
            return Embedding.from_bytes(raw)
        except CorruptEmbeddingError:
            await self.delete(key)
            return None

    async def set(self, key: str, embedding: Embedding) -> None:
        await self._call(self._client.set, self.key(key), embedding.to_bytes(), ex=self.ttl_s)

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete, self.key(key))

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self._client.exists, self.key(key)))

    # --- cross-replica single flight ------------------------------------------------
    def lock(self, key: str) -> EncodeLock:
        return EncodeLock(self, key)

    def _lock_object(self, key: str) -> Lock:
        return self._client.lock(
            f"{self.prefix}:lock:{key}", timeout=self.lock_ttl_s, blocking=False
        )

    async def lock_held(self, key: str) -> bool:
        return bool(await self._call(self._client.exists, f"{self.prefix}:lock:{key}"))


class EncodeLock:
    """``async with tier.lock(key) as owned``: ``owned`` is False when another replica holds it.

    A Redis failure counts as owning the lock (encode locally rather than wait).
    """

    def __init__(self, tier: RedisTier, key: str) -> None:
        self._tier = tier
        self._lock = tier._lock_object(key)
        self._owned = False

    async def __aenter__(self) -> bool:
        if not self._tier.available:
            return True
        try:
            self._owned = bool(await self._lock.acquire())
        except (TimeoutError, RedisError, OSError) as exc:
            self._tier._failed(exc)
            return True
        return self._owned

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._owned:
            return
        with contextlib.suppress(LockError, RedisError, OSError, TimeoutError):
            await self._lock.release()  # expired or Redis gone: the TTL cleans up
