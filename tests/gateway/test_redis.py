"""The shared Redis tier, against a real Redis server (never a fake)."""

from __future__ import annotations

import asyncio
import base64

import httpx
import redis

from service.core.embedding import Embedding
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.gateway.test_errors import png_bytes
from tests.services import RedisServer, stored_record


def raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def redis_key(gateway: Gateway, image_id: object) -> str:
    """The Redis key under which the gateway stores this image's embedding."""
    tier = gateway.state.embeddings.cache.redis
    assert tier is not None
    return tier.key(gateway.state.embeddings.key(str(image_id)))


async def embed(client: httpx.AsyncClient, data: bytes) -> dict[str, object]:
    response = await client.post("/embed", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_embedding_is_shared_between_replicas(
    gateway_factory: GatewayFactory, redis_url: str
) -> None:
    image = png_bytes(seed=11)
    async with gateway_factory(cache="redis", redis_url=redis_url, cache_ttl_s=600) as first:
        body = await embed(first.client, image)
        assert body["cached"] is False
        key = redis_key(first, body["image_id"])
        record = Embedding.from_bytes(stored_record(raw(redis_url), key))
        assert (record.width, record.height, record.dtype) == (64, 48, "float16")
        assert 0 < raw(redis_url).ttl(key) <= 600

    async with gateway_factory(cache="redis", redis_url=redis_url) as second:  # fresh L1
        again = await embed(second.client, image)
        assert again["cached"] is True
        assert second.encodes == 0
        assert second.metric("esam_cache_lookups_total", {"tier": "redis", "outcome": "hit"}) == 1
        segment = await second.client.post(
            "/segment",
            json={
                "image_id": again["image_id"],
                "prompts": [{"points": [[10, 10]], "labels": [1]}],
            },
        )
        assert segment.status_code == 200


async def test_two_replicas_encode_a_new_image_once(
    gateway_factory: GatewayFactory, redis_url: str
) -> None:
    image = png_bytes(seed=12)
    async with (
        gateway_factory(cache="redis", redis_url=redis_url) as a,
        gateway_factory(cache="redis", redis_url=redis_url) as b,
    ):
        results = await asyncio.gather(
            *(
                gw.client.post("/embed", content=image, headers={"Content-Type": "image/png"})
                for gw in (a, b, a, b)
            )
        )
        assert [r.status_code for r in results] == [200] * 4
        assert a.encodes + b.encodes == 1
        waits = sum(
            gw.metric("esam_singleflight_waits_total", {"scope": "redis_lock"}) for gw in (a, b)
        )
        assert waits >= 1


async def test_redis_outage_is_survived_and_recovered(
    gateway_factory: GatewayFactory, private_redis: RedisServer
) -> None:
    async with gateway_factory(
        cache="redis", redis_url=private_redis.url, redis_timeout_s=0.3, redis_retry_s=0.2
    ) as gw:
        before = await embed(gw.client, png_bytes(seed=21))
        assert raw(private_redis.url).dbsize() == 1

        private_redis.stop()
        during = [await embed(gw.client, png_bytes(seed=s)) for s in (22, 23)]
        assert all(b["cached"] is False for b in during)
        segment = await gw.client.post(
            "/segment",
            json={
                "image": base64.b64encode(png_bytes(seed=24)).decode(),
                "prompts": [{"points": [[5, 5]], "labels": [1]}],
            },
        )
        assert segment.status_code == 200
        cached_in_l1 = await embed(gw.client, png_bytes(seed=21))
        assert cached_in_l1["cached"] is True
        assert cached_in_l1["image_id"] == before["image_id"]
        assert (
            gw.metric("esam_redis_errors_total", {"op": "get"})
            + gw.metric("esam_redis_errors_total", {"op": "set"})
            >= 1
        )
        assert gw.metric("esam_redis_up") == 0
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["redis"] == "down"

        private_redis.start()  # empty: it keeps nothing on disk
        await asyncio.sleep(0.3)
        after = await embed(gw.client, png_bytes(seed=25))
        assert after["cached"] is False
        assert raw(private_redis.url).dbsize() == 1  # the shared tier is written again
        assert gw.metric("esam_redis_up") == 1
        assert (await gw.client.get("/readyz")).json()["redis"] == "ok"


async def test_corrupt_record_is_a_miss(gateway_factory: GatewayFactory, redis_url: str) -> None:
    image = png_bytes(seed=31)
    async with gateway_factory(cache="redis", redis_url=redis_url) as gw:
        body = await embed(gw.client, image)
        cache = gw.state.embeddings.cache
        key = redis_key(gw, body["image_id"])
        raw(redis_url).set(key, b"ESE1 not really")
        cache.l1.clear()
        again = await embed(gw.client, image)
        assert again["cached"] is False
        assert gw.encodes == 2
        assert Embedding.from_bytes(stored_record(raw(redis_url), key)).width == 64
