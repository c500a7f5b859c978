"""Real backing services for tests: Redis (the machine's, or one we start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from devtools import redis_server
from devtools.redis_server import free_port, redis_answers
from service.core.cache import RedisTier
from service.core.cache.redis_client import RedisTarget

__all__ = ["RedisServer", "free_port", "redis_answers", "redis_tier", "stored_record"]


class RedisServer(redis_server.RedisServer):
    """A private ``redis-server`` on a free port, which tests may stop and start again.

    Where ``redis-server`` is missing: a failure under CI, a skip elsewhere.
    """

    def __init__(self, workdir: Path) -> None:
        try:
            super().__init__(workdir)
        except FileNotFoundError as exc:
            if os.environ.get("CI"):
                pytest.fail(str(exc))
            pytest.skip(str(exc))


def stored_record(client: redis.Redis, key: str | bytes) -> bytes:
    """The raw value at ``key`` (an embedding record), which must exist."""
    value = client.get(key)
    assert isinstance(value, bytes), f"no record at {key!r}"
    return value


def redis_tier(
    url: str,
    prefix: str,
    *,
    timeout_s: float = 0.3,
    retry_s: float = 0.5,
    lock_ttl_s: float = 5,
    ttl_s: int = 60,
) -> RedisTier:
    """The shared tier on a standalone Redis at ``url``, under its own key ``prefix``."""
    return RedisTier(
        RedisTarget.parse("standalone", url, "mymaster"),
        prefix=prefix,
        ttl_s=ttl_s,
        timeout_s=timeout_s,
        retry_s=retry_s,
        lock_ttl_s=lock_ttl_s,
    )
