"""The cache on a real Redis Cluster (3 masters) and behind a real Sentinel, through a failover
in the middle of a load of clicks and uploads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.redis_server import LocalRedisCluster, LocalSentinel
from tests.gateway.fixtures import GatewayFactory
from tests.support import embed, png_bytes, segment_status

# a browser, Redis Cluster/Sentinel, a fuzzer or a client generator: not in `make test-fast`
pytestmark = pytest.mark.slow


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    watched = LocalSentinel(tmp_path)
    try:
        watched.start()
        yield watched
    finally:
        watched.stop()


async def test_cluster_spreads_keys_and_shares_embeddings_between_gateways(
    gateway_factory: GatewayFactory, redis_cluster: LocalRedisCluster
) -> None:
    settings = {"cache": "redis", "redis_mode": "cluster", "redis_url": redis_cluster.urls[1]}
    async with gateway_factory(**settings) as first, gateway_factory(**settings) as second:
        for gw in (first, second):
            listener = gw.state.embeddings.cache.invalidations
            assert listener is not None
            await asyncio.wait_for(listener.subscribed.wait(), 5)
        ids = [(await embed(first.client, png_bytes(seed=300 + i)))["image_id"] for i in range(9)]
        prefix = first.state.settings.redis_key_prefix
        per_node = redis_cluster.keys_per_node(f"{prefix}:emb:*")
        assert sum(per_node) == 9
        assert sum(1 for n in per_node if n > 0) >= 2, per_node  # spread over the masters
        # made through one gateway, served by the other (from the Cluster, no encode)
        for image_id in ids[:3]:
            assert await segment_status(second.client, image_id) == 200
        assert second.encodes == 0
        # a delete through one gateway reaches the other's memory
        assert (await first.client.delete(f"/embeddings/{ids[0]}")).status_code == 204
        loop = asyncio.get_running_loop()
        start = loop.time()
        while await segment_status(second.client, ids[0]) != 404:
            assert loop.time() - start < 1.0
            await asyncio.sleep(0.02)
        # the cross-replica encode lock works on the Cluster too
        image = png_bytes(seed=399)
        both = await asyncio.gather(embed(first.client, image), embed(second.client, image))
        assert both[0]["image_id"] == both[1]["image_id"]
        assert first.encodes + second.encodes == 9 + 1


async def test_sentinel_failover_during_load_fails_no_request(
    gateway_factory: GatewayFactory, sentinel: LocalSentinel
) -> None:
    settings = {
        "cache": "redis",
        "redis_mode": "sentinel",
        "redis_url": sentinel.url,
        "redis_timeout_s": 0.5,
        "redis_retry_s": 0.5,
    }
    async with gateway_factory(**settings) as gw:
        before = sentinel.master_port()
        images = [png_bytes(seed=500 + i) for i in range(10)]
        ids = [(await embed(gw.client, image))["image_id"] for image in images[:3]]

        async def load() -> list[int]:
            """Clicks on the cached images and, every few rounds, a new image uploaded."""
            statuses = []
            uploads = iter(images[6:])
            for round_ in range(30):
                for image_id in ids:
                    statuses.append(await segment_status(gw.client, image_id))
                if round_ == 3:
                    await asyncio.to_thread(sentinel.failover)
                if round_ % 8 == 4:
                    upload = await gw.client.post(
                        "/embed", content=next(uploads), headers={"Content-Type": "image/png"}
                    )
                    statuses.append(upload.status_code)
                await asyncio.sleep(0.1)
            return statuses

        statuses = await load()
        assert set(statuses) == {200}, statuses  # nothing failed: at most an image re-encoded
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while sentinel.master_port() == before:
            assert loop.time() < deadline, "no failover happened"
            await asyncio.sleep(0.2)
        # after the failover, new embeddings are written to the new master
        for image in images[3:6]:
            body = await embed(gw.client, image)
            assert body["cached"] is False
        await asyncio.sleep(1.0)
        new_master = sentinel.master_port()
        import redis

        prefix = gw.state.settings.redis_key_prefix
        stored = list(redis.Redis(port=new_master).scan_iter(f"{prefix}:emb:*"))
        assert len(stored) >= 3


ACME, GLOBEX = "acme-key-0123456789abcdef", "globex-key-0123456789abcdef"
TENANT_KEYS = f"acme:{ACME},globex:{GLOBEX}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_tenants_stay_apart_on_a_cluster_across_gateways(
    gateway_factory: GatewayFactory, redis_cluster: LocalRedisCluster
) -> None:
    settings = {
        "cache": "redis",
        "redis_mode": "cluster",
        "redis_url": redis_cluster.urls[0],
        "api_keys": TENANT_KEYS,
    }
    async with gateway_factory(**settings) as first, gateway_factory(**settings) as second:
        for gw in (first, second):
            listener = gw.state.embeddings.cache.invalidations
            assert listener is not None
            await asyncio.wait_for(listener.subscribed.wait(), 5)
        images = [png_bytes(seed=600 + i) for i in range(6)]
        ids = []
        for image in images:
            response = await first.client.post(
                "/embed", content=image, headers={**bearer(ACME), "Content-Type": "image/png"}
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["image_id"])
        prefix = first.state.settings.redis_key_prefix
        assert sum(redis_cluster.keys_per_node(f"{prefix}:who:*")) == len(ids)
        for image_id in ids:
            path = f"/embeddings/{image_id}"
            assert (await second.client.head(path, headers=bearer(ACME))).status_code == 204
            assert (await second.client.head(path, headers=bearer(GLOBEX))).status_code == 404
            assert (await second.client.get(path, headers=bearer(GLOBEX))).status_code == 404
        # globex sends one of the images itself: its own access, no encode
        shared = await second.client.post(
            "/embed", content=images[0], headers={**bearer(GLOBEX), "Content-Type": "image/png"}
        )
        assert shared.json()["cached"] is True
        assert second.encodes == 0
        # acme's delete through one gateway: acme loses it on both, globex keeps it
        path = f"/embeddings/{ids[0]}"
        assert (await first.client.delete(path, headers=bearer(ACME))).status_code == 204
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (await second.client.head(path, headers=bearer(ACME))).status_code != 404:
            assert loop.time() - start < 2.0
            await asyncio.sleep(0.02)
        for gw in (first, second):
            assert (await gw.client.head(path, headers=bearer(GLOBEX))).status_code == 204
        # and an image only acme had goes from the Cluster with acme's delete
        gone = f"/embeddings/{ids[1]}"
        assert (await second.client.delete(gone, headers=bearer(ACME))).status_code == 204
        assert sum(redis_cluster.keys_per_node(f"{prefix}:emb:*")) == len(ids) - 1


async def test_tenants_stay_apart_behind_a_sentinel(
    gateway_factory: GatewayFactory, sentinel: LocalSentinel
) -> None:
    settings = {
        "cache": "redis",
        "redis_mode": "sentinel",
        "redis_url": sentinel.url,
        "api_keys": TENANT_KEYS,
    }
    async with gateway_factory(**settings) as first, gateway_factory(**settings) as second:
        response = await first.client.post(
            "/embed",
            content=png_bytes(seed=700),
            headers={**bearer(ACME), "Content-Type": "image/png"},
        )
        path = f"/embeddings/{response.json()['image_id']}"
        assert (await second.client.head(path, headers=bearer(ACME))).status_code == 204
        assert (await second.client.head(path, headers=bearer(GLOBEX))).status_code == 404
        assert (await second.client.delete(path, headers=bearer(GLOBEX))).status_code == 204
        assert (await first.client.head(path, headers=bearer(ACME))).status_code == 204
