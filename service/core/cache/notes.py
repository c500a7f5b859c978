"""Small notes with a TTL in a namespace of their own: an adapter's index beside the
embeddings (Label Studio's image reference → image id), never mixed with them.

Each note lives in this process (the oldest dropped past ``size``) and, with the Redis
cache, in Redis for every replica (so that, say, an image is downloaded once for all of
them). Redis being down only makes notes local; it never fails a request. Names are
hashed before they reach Redis (a reference may be a signed URL).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict

from service.core.cache.redis_tier import RedisTier, RedisUnavailableError


class NoteStore:
    def __init__(
        self, namespace: str, ttl_s: float, shared: RedisTier | None, size: int = 100_000
    ) -> None:
        self.namespace = namespace
        self._ttl = ttl_s
        self._size = size
        self._shared = shared
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _redis_key(self, name: str) -> str:
        assert self._shared is not None
        digest = hashlib.sha256(name.encode()).hexdigest()
        return f"{self._shared.prefix}:{self.namespace}:{digest}"

    async def get(self, name: str) -> str | None:
        entry = self._entries.get(name)
        if entry is not None and entry[1] >= time.monotonic():
            self._entries.move_to_end(name)
            return entry[0]
        self._entries.pop(name, None)
        if self._shared is None:
            return None
        try:
            raw = await self._shared.call(self._shared.client.get, self._redis_key(name))
        except RedisUnavailableError:
            return None
        if not isinstance(raw, bytes):
            return None
        value = raw.decode()
        self._remember(name, value)
        return value

    async def put(self, name: str, value: str) -> None:
        self._remember(name, value)
        if self._shared is not None:
            with contextlib.suppress(RedisUnavailableError):
                await self._shared.call(
                    self._shared.client.set,
                    self._redis_key(name),
                    value.encode(),
                    ex=self._shared.ttl_s,
                )

    def _remember(self, name: str, value: str) -> None:
        self._entries[name] = (value, time.monotonic() + self._ttl)
        self._entries.move_to_end(name)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
