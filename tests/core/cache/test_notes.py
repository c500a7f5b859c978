"""Adapters' notes beside the embeddings (Label Studio's reference → image id): local with a
TTL and a size bound, shared by replicas through a real Redis under names hashed apart from
the embeddings' keys, and only local while Redis is down."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import pytest
import redis

from service.core.cache import EmbeddingCache, MemoryCache
from service.core.cache.notes import NoteStore
from service.core.metrics import Metrics
from tests.services import RedisServer, redis_tier


async def test_notes_are_kept_for_their_ttl_and_the_newest_past_the_size() -> None:
    notes = NoteStore("lsref", ttl_s=0.2, shared=None, size=2)
    for n in range(3):
        await notes.put(f"reference {n}", f"id {n}")
    assert await notes.get("reference 0") is None  # the oldest dropped past the size
    assert await notes.get("reference 2") == "id 2"
    await asyncio.sleep(0.3)
    assert await notes.get("reference 2") is None  # past its TTL


async def test_replicas_share_notes_through_redis_under_hashed_names(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    prefix = f"notes-{uuid.uuid4().hex[:8]}"
    try:
        one, other = redis_tier(server.url, prefix), redis_tier(server.url, prefix)
        name = "acme\nhttps://bucket.example/cat.jpg?X-Amz-Signature=secret"
        await NoteStore("lsref", 60, one).put(name, "f" * 64)
        assert await NoteStore("lsref", 60, other).get(name) == "f" * 64
        assert await NoteStore("other", 60, other).get(name) is None  # namespaces apart
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        keys = set(raw.keys(f"{prefix}:*"))
        assert keys == {f"{prefix}:lsref:{hashlib.sha256(name.encode()).hexdigest()}"}
        assert 0 < raw.ttl(keys.pop()) <= 60
        await one.close()
        await other.close()
    finally:
        server.stop()


async def test_with_redis_down_notes_are_local_and_nothing_fails(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    shared = redis_tier(server.url, "down")
    server.stop()
    notes = NoteStore("lsref", 60, shared)
    await notes.put("reference", "image id")  # no error
    assert await notes.get("reference") == "image id"
    assert await NoteStore("lsref", 60, shared).get("reference") is None
    await shared.close()


@pytest.mark.parametrize("with_redis", [False, True])
async def test_the_cache_hands_out_note_stores_on_its_own_tiers(
    tmp_path: Path, with_redis: bool
) -> None:
    server = RedisServer(tmp_path) if with_redis else None
    if server is not None:
        server.start()
    try:
        shared = redis_tier(server.url, "handed") if server is not None else None
        cache = EmbeddingCache(MemoryCache(1 << 20, 30), shared, Metrics())
        notes = cache.notes("lsref")
        await notes.put("reference", "image id")
        again = cache.notes("lsref")  # a second store (another replica's, with Redis)
        assert await again.get("reference") == ("image id" if with_redis else None)
        await cache.close()
    finally:
        if server is not None:
            server.stop()
