"""One factory for the Redis clients: standalone, Cluster or Sentinel, hidden from the rest.

``ESAM_REDIS_MODE``:

* ``standalone``: ``ESAM_REDIS_URL`` is one ``redis://host:port/db``;
* ``cluster``: ``ESAM_REDIS_URL`` names any node, or several comma-separated; the client
  discovers the others and follows the slots (keys spread over the masters);
* ``sentinel``: ``ESAM_REDIS_URL`` lists the sentinels (``redis://s1:26379,redis://s2:26379``)
  and ``ESAM_REDIS_SENTINEL_MASTER`` names the master; after a failover the client
  asks the sentinels again and reconnects to the new master.

Every client has bounded operation timeouts and reconnects once on a broken pooled
connection (a restarted or failed-over Redis); timeouts are not retried. The
*listener* client (cross-replica invalidation) has no read timeout and checks its
connection's health itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

RedisMode = Literal["standalone", "cluster", "sentinel"]


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_urls(url: str) -> tuple[str, ...]:
    """The comma-separated URLs, each ``redis://``, ``rediss://`` or ``unix://``."""
    urls = tuple(u.strip() for u in url.split(",") if u.strip())
    if not urls:
        raise ValueError("no Redis address given")
    bad = [u for u in urls if not u.startswith(REDIS_SCHEMES)]
    if bad:
        raise ValueError(
            f"each URL must start with redis://, rediss:// or unix:// (not {bad[0]!r})"
        )
    return urls


@dataclass(frozen=True)
class RedisTarget:
    mode: RedisMode
    urls: tuple[str, ...]
    sentinel_master: str = "mymaster"

    @classmethod
    def parse(cls, mode: RedisMode, url: str, sentinel_master: str) -> RedisTarget:
        """``ESAM_REDIS_URL`` (with the mode and master): what Settings validates at
        start-up and the cache connects to, by this one parser."""
        urls = redis_urls(url)
        if mode == "standalone" and len(urls) > 1:
            raise ValueError("standalone mode takes one Redis URL (cluster or sentinel: several)")
        return cls(mode, urls, sentinel_master)

    def nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each URL (cluster nodes or sentinels)."""
        found = []
        for url in self.urls:
            parts = urlsplit(url)
            found.append((parts.hostname or "127.0.0.1", parts.port or 6379))
        return found

    @property
    def password(self) -> str | None:
        return urlsplit(self.urls[0]).password


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def make_client(
    target: RedisTarget, *, timeout_s: float, listener: bool = False, attempt: int = 0
) -> Any:
    """A client for ``target``: ``redis.asyncio.Redis`` or ``RedisCluster`` (same commands).

    ``listener``: for a long-lived subscription (no read timeout, health checks). For a
    Cluster, a subscription goes to one node, the ``attempt``-th in turn (PUBLISH reaches
    every node of a Cluster, so any node will do while it is up).
    """
    options: dict[str, Any] = {"socket_connect_timeout": timeout_s, "retry": _retry()}
    if listener:
        options.update(socket_keepalive=True, health_check_interval=5)
    else:
        options.update(socket_timeout=timeout_s, health_check_interval=30)
    if target.mode == "standalone":
        return aioredis.Redis.from_url(target.urls[0], **options)
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis 8.2
            target.nodes(),
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            sentinel_kwargs={"socket_timeout": timeout_s, "password": None},
        )
        return sentinel.master_for(target.sentinel_master, password=target.password, **options)
    if listener:
        nodes = target.nodes()
        host, port = nodes[attempt % len(nodes)]
        return aioredis.Redis(host=host, port=port, password=target.password, **options)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes()],
        password=target.password,
        **options,
    )


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


async def close_client(client: Any) -> None:
    """Close a client from :func:`make_client`, and for Sentinel its sentinels' connections."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        await sentinel.aclose()
