"""Real backing services for tests: Redis (the machine's, or one we start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from devtools import redis_server
from devtools.redis_server import free_port, redis_answers

__all__ = ["RedisServer", "free_port", "redis_answers", "stored_record"]


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
