"""In-process LRU of embeddings, bounded in bytes, with a per-entry TTL."""

from __future__ import annotations

import time
from collections import OrderedDict

from service.core.embedding import Embedding


class MemoryCache:
    name = "l1"

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[Embedding, float]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Embedding | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        embedding, expires = entry
        if time.monotonic() >= expires:
            self.delete(key)
            return None
        self._entries.move_to_end(key)
        return embedding

    def set(self, key: str, embedding: Embedding) -> None:
        size = embedding.nbytes
        self.delete(key)
        if size > self.max_bytes:
            return  # larger than the whole cache (or the cache is disabled)
        while self._bytes + size > self.max_bytes:
            _, (evicted, _) = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
        self._entries[key] = (embedding, time.monotonic() + self.ttl_s)
        self._bytes += size

    def delete(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry[0].nbytes
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
