"""Two-tier embedding cache: an in-process LRU bounded in bytes in front of Redis."""

from service.core.cache.memory import MemoryCache
from service.core.cache.redis_tier import RedisTier
from service.core.cache.tiered import EmbeddingCache

__all__ = ["EmbeddingCache", "MemoryCache", "RedisTier"]
