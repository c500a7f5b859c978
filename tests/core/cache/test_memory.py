"""The in-process LRU is bounded in bytes and honours its TTL."""

from __future__ import annotations

import time

import numpy as np

from service.core.cache.memory import MemoryCache
from service.core.embedding import Embedding


def record(value: float = 0.0) -> Embedding:
    return Embedding.from_array(np.full((256, 64, 64), value, np.float32), 8, 8, "float16")


def test_evicts_least_recently_used_to_stay_within_bytes() -> None:
    size = record().nbytes
    cache = MemoryCache(max_bytes=3 * size, ttl_s=60)
    for key in "abc":
        cache.set(key, record())
    assert cache.get("a") is not None  # a is now the most recent
    cache.set("d", record())
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}
    assert cache.size_bytes == 3 * size <= cache.max_bytes


def test_replacing_a_key_does_not_leak_bytes() -> None:
    cache = MemoryCache(max_bytes=10 * record().nbytes, ttl_s=60)
    for _ in range(5):
        cache.set("a", record(1.0))
    assert len(cache) == 1
    assert cache.size_bytes == record().nbytes


def test_zero_budget_disables_it() -> None:
    cache = MemoryCache(max_bytes=0, ttl_s=60)
    cache.set("a", record())
    assert cache.get("a") is None


def test_entries_expire() -> None:
    cache = MemoryCache(max_bytes=1 << 30, ttl_s=0.05)
    cache.set("a", record())
    assert cache.get("a") is not None
    time.sleep(0.06)
    assert cache.get("a") is None
    assert cache.size_bytes == 0


def test_a_value_fetched_before_a_delete_is_not_stored_after_it() -> None:
    cache = MemoryCache(max_bytes=1 << 30, ttl_s=60)
    fetched = cache.generation  # a Redis GET starts
    cache.delete("a")  # another replica's DELETE arrives meanwhile
    cache.set("a", record(), fetched_at=fetched)
    assert cache.get("a") is None
    cache.set("b", record(), fetched_at=fetched)  # other keys are not affected
    assert cache.get("b") is not None
    cache.set("a", record(), fetched_at=cache.generation)  # fetched after the delete
    assert cache.get("a") is not None


def test_clear_counts_as_deleting_everything() -> None:
    cache = MemoryCache(max_bytes=1 << 30, ttl_s=60)
    fetched = cache.generation
    cache.clear()
    cache.set("x", record(), fetched_at=fetched)
    assert cache.get("x") is None


def test_forgotten_deletions_are_assumed() -> None:
    cache = MemoryCache(max_bytes=1 << 30, ttl_s=60)
    fetched = cache.generation
    for i in range(5000):  # more deletions than are remembered one by one
        cache.delete(f"k{i}")
    cache.set("never-deleted", record(), fetched_at=fetched)
    assert cache.get("never-deleted") is None  # cannot tell any more: not stored


def test_expired_entries_go_as_new_ones_are_stored() -> None:
    """Far below its byte bound, the tier holds what its TTL keeps alive, not every entry
    ever stored (a gateway's memory levels off after a TTL of traffic)."""
    one = record().nbytes
    cache = MemoryCache(max_bytes=100 * one, ttl_s=0.1)
    for n in range(5):
        cache.set(f"old{n}", record(n))
    assert (len(cache), cache.size_bytes) == (5, 5 * one)
    time.sleep(0.15)
    cache.set("new", record(9))
    assert (len(cache), cache.size_bytes) == (1, one)
    assert cache.get("new") is not None
