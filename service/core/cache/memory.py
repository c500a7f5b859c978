"""In-process LRU of embeddings, bounded in bytes, with a per-entry TTL.

Each entry also notes the tenants known here to hold it (``grant``/``holds``): with
Redis, a note of what Redis confirmed (dropped with the entry); without, the truth.

Deletes are remembered (by a generation number) for a while, so that an entry
fetched from Redis *before* another replica deleted it is not put back here
*after* the deletion arrived (see ``set(..., fetched_at=...)``).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from service.core.embedding import Embedding

#: How many recent deletions are remembered one by one (older ones count as "maybe").
_REMEMBERED_DELETES = 4096


class MemoryCache:
    """The in-process tier."""

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[Embedding, float]] = OrderedDict()
        self._tenants: dict[str, set[str]] = {}
        self._bytes = 0
        self._generation = 0  # bumped by every delete and clear
        self._deleted_at: OrderedDict[str, int] = OrderedDict()
        self._floor = 0  # deletions at or before this generation are no longer itemised

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def generation(self) -> int:
        """Pass to ``set(..., fetched_at=)`` for a value read elsewhere from now on."""
        return self._generation

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Embedding | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        embedding, expires = entry
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return embedding

    def set(
        self,
        key: str,
        embedding: Embedding,
        *,
        fetched_at: int | None = None,
        tenants: frozenset[str] = frozenset(),
    ) -> None:
        """Store (keeping the tenants noted for ``key``, adding ``tenants``); with
        ``fetched_at``, only if ``key`` was not deleted since that generation."""
        if fetched_at is not None and self._deleted_since(key, fetched_at):
            return
        size = embedding.nbytes
        held = self._tenants.get(key, set()) | tenants if key in self._entries else set(tenants)
        self._drop(key)
        self._drop_expired()
        if size > self.max_bytes:
            return  # larger than the whole cache (or the cache is disabled)
        while self._bytes + size > self.max_bytes:
            evicted_key, (evicted, _) = self._entries.popitem(last=False)
            self._tenants.pop(evicted_key, None)
            self._bytes -= evicted.nbytes
        self._entries[key] = (embedding, time.monotonic() + self.ttl_s)
        self._tenants[key] = held
        self._bytes += size

    def _drop_expired(self) -> None:
        """Expired entries at the least recently used end go (amortised O(1) per store), so
        that the tier holds about what its TTL keeps alive, not its byte bound, once the
        traffic has run for a TTL."""
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest][1] > now:
                return
            self._drop(oldest)

    def get_for(self, key: str, tenant: str) -> Embedding | None:
        """The (live) entry ``key`` if ``tenant`` is noted as holding it."""
        embedding = self.get(key)
        if embedding is None or tenant not in self._tenants.get(key, ()):
            return None
        return embedding

    def holds(self, key: str, tenant: str) -> bool:
        """Whether ``tenant`` is noted as holding the (live) entry ``key``."""
        return self.get_for(key, tenant) is not None

    def grant(self, key: str, tenant: str) -> None:
        """Note that ``tenant`` holds ``key`` (no-op when the entry is not here)."""
        if key in self._entries:
            self._tenants.setdefault(key, set()).add(tenant)

    def revoke(self, key: str, tenant: str) -> bool:
        """Forget ``tenant``'s hold on ``key``; True if another tenant still holds it."""
        held = self._tenants.get(key)
        if held is None:
            return False
        held.discard(tenant)
        return bool(held)

    def delete(self, key: str) -> bool:
        """Forget ``key`` (a deletion: remembered, see ``set``). True if it was here."""
        self._generation += 1
        self._deleted_at[key] = self._generation
        self._deleted_at.move_to_end(key)
        while len(self._deleted_at) > _REMEMBERED_DELETES:
            _, generation = self._deleted_at.popitem(last=False)
            self._floor = max(self._floor, generation)
        return self._drop(key)

    def clear(self) -> None:
        """Forget everything (counts as a deletion of every key)."""
        self._generation += 1
        self._floor = self._generation
        self._deleted_at.clear()
        self._entries.clear()
        self._tenants.clear()
        self._bytes = 0

    def _deleted_since(self, key: str, generation: int) -> bool:
        if generation < self._floor:
            return True  # too long ago to tell: assume the worst
        return self._deleted_at.get(key, -1) > generation

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        self._tenants.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry[0].nbytes
        return True
