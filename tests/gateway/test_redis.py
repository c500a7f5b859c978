"""The shared Redis tier, against a real Redis server (never a fake)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from pathlib import Path

import pytest
import redis

from service.core.embedding import Embedding
from tests.conftest import Fixture
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.services import RedisServer, stored_record
from tests.support import embed, png_bytes, segment_status

MiB = 1 << 20


def entries(url: str) -> tuple[int, int]:
    """(embeddings, tenant sets) in the Redis at ``url``."""
    client = raw(url)
    return len(list(client.scan_iter("*:emb:*"))), len(list(client.scan_iter("*:who:*")))


def raw(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def redis_key(gateway: Gateway, image_id: object) -> str:
    """The Redis key under which the gateway stores this image's embedding."""
    tier = gateway.state.embeddings.cache.redis
    assert tier is not None
    return tier.key(gateway.state.embeddings.key(str(image_id)))


def expected_key(prefix: str, checkpoint: Path, image: bytes) -> str:
    """The documented key, computed here from first principles (not by the code under test):
    ``<prefix>:emb:efficientsam-<variant>-<checkpoint sha256[:12]>-p<preprocessing>:<sha256>``.
    """
    checkpoint_digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]
    model = f"efficientsam-ti-{checkpoint_digest}-p1"
    return f"{prefix}:emb:{model}:{hashlib.sha256(image).hexdigest()}"


async def test_embedding_is_shared_between_replicas(
    gateway_factory: GatewayFactory, redis_url: str, fixture: Fixture
) -> None:
    image = png_bytes(seed=11)
    async with gateway_factory(cache="redis", redis_url=redis_url, cache_ttl_s=600) as first:
        body = await embed(first.client, image)
        assert body["cached"] is False
        key = expected_key(first.state.settings.redis_key_prefix, fixture.checkpoint, image)
        assert raw(redis_url).exists(key)
        record = Embedding.from_bytes(stored_record(raw(redis_url), key))
        assert (record.width, record.height, record.dtype) == (64, 48, "int8")
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


@pytest.mark.real_encoder  # the encodes must overlap
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


@pytest.mark.slow
async def test_redis_outage_is_survived_and_recovered(
    gateway_factory: GatewayFactory, private_redis: RedisServer
) -> None:
    async with gateway_factory(
        cache="redis", redis_url=private_redis.url, redis_timeout_s=0.3, redis_retry_s=0.2
    ) as gw:
        before = await embed(gw.client, png_bytes(seed=21))
        assert entries(private_redis.url) == (1, 1)

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
        assert gw.metric_sum("esam_redis_errors_total") >= 1
        assert gw.metric("esam_redis_up") == 0
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["redis"] == "down"

        private_redis.start()  # empty: it keeps nothing on disk
        await asyncio.sleep(0.3)
        after = await embed(gw.client, png_bytes(seed=25))
        assert after["cached"] is False
        assert entries(private_redis.url) == (1, 1)  # the shared tier is written again
        assert gw.metric("esam_redis_up") == 1
        assert (await gw.client.get("/readyz")).json()["redis"] == "ok"


async def test_an_int8_record_takes_half_a_float16_one_and_both_formats_serve(
    gateway_factory: GatewayFactory, redis_url: str
) -> None:
    """Redis's own account (``MEMORY USAGE``): a float16 record is 2 MiB + its header,
    which jemalloc rounds up to its 2.5 MiB class; int8 (1 MiB + 1 KiB of scales + the
    header) lands in the 1.25 MiB class. A gateway set to one dtype serves a record of the
    other as it is (a rolling change of ESAM_EMBEDDING_DTYPE re-encodes nothing)."""
    image = png_bytes(seed=13)
    client = raw(redis_url)
    usage = {}
    for dtype in ("float16", "int8"):
        prefix = f"test-usage-{dtype}-{uuid.uuid4().hex[:8]}"
        async with gateway_factory(
            cache="redis", redis_url=redis_url, embedding_dtype=dtype, redis_key_prefix=prefix
        ) as gw:
            image_id = (await embed(gw.client, image))["image_id"]
            key = redis_key(gw, image_id)
            record = stored_record(client, key)
            assert record[:4] == (b"ESE2" if dtype == "int8" else b"ESE1")
            usage[dtype] = int(client.memory_usage(key, samples=0) or 0)
        other = "float16" if dtype == "int8" else "int8"
        async with gateway_factory(
            cache="redis", redis_url=redis_url, embedding_dtype=other, redis_key_prefix=prefix
        ) as reader:  # a fresh L1: the record comes from Redis
            assert (await embed(reader.client, image))["cached"] is True
            assert reader.encodes == 0
            assert await segment_status(reader.client, image_id) == 200
            held = await reader.state.embeddings.lookup(str(image_id), tenant="default")
            assert held is not None
            assert held.dtype == dtype
        client.delete(key)
    print(f"MEMORY USAGE: {usage}")
    # the value's allocation class plus the key's and object's few dozen bytes
    assert 2.5 * MiB <= usage["float16"] <= 2.5 * MiB + 256
    assert 1.25 * MiB <= usage["int8"] <= 1.25 * MiB + 256


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


async def test_a_delete_on_one_replica_is_seen_by_the_other(
    gateway_factory: GatewayFactory, redis_url: str
) -> None:
    image = png_bytes(seed=41)
    async with (
        gateway_factory(cache="redis", redis_url=redis_url) as first,
        gateway_factory(cache="redis", redis_url=redis_url) as second,
    ):
        for gw in (first, second):
            listener = gw.state.embeddings.cache.invalidations
            assert listener is not None
            await asyncio.wait_for(listener.subscribed.wait(), 5)
        image_id = (await embed(first.client, image))["image_id"]
        assert await segment_status(second.client, image_id) == 200  # now in second's L1
        assert len(second.state.embeddings.cache.l1) == 1

        deleted = await first.client.delete(f"/embeddings/{image_id}")
        assert deleted.status_code == 204
        loop = asyncio.get_running_loop()
        start = loop.time()
        while await segment_status(second.client, image_id) != 404:
            assert loop.time() - start < 1.0, "the second replica still serves the embedding"
            await asyncio.sleep(0.02)
        assert (await second.client.head(f"/embeddings/{image_id}")).status_code == 404
        assert second.metric("esam_cache_invalidations_total", {"source": "message"}) == 1


async def test_delete_is_503_when_redis_cannot_confirm_it(
    gateway_factory: GatewayFactory, private_redis: RedisServer
) -> None:
    async with gateway_factory(
        cache="redis", redis_url=private_redis.url, redis_timeout_s=0.3, redis_retry_s=0.5
    ) as gw:
        image_id = (await embed(gw.client, png_bytes(seed=51)))["image_id"]
        private_redis.stop()
        response = await gw.client.delete(f"/embeddings/{image_id}")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "cache_unavailable"
        assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.slow
async def test_missed_deletes_clear_the_local_tier_after_an_outage(
    gateway_factory: GatewayFactory, private_redis: RedisServer
) -> None:
    """Pub/sub keeps nothing for an absent listener: a replica that was away must resync."""
    settings = {"cache": "redis", "redis_url": private_redis.url, "redis_retry_s": 0.2}
    async with gateway_factory(**settings) as gw:
        listener = gw.state.embeddings.cache.invalidations
        assert listener is not None
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        kept = (await embed(gw.client, png_bytes(seed=61)))["image_id"]
        private_redis.stop()  # an outage without deletes keeps the local tier
        await asyncio.sleep(0.5)
        private_redis.start()
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        assert await segment_status(gw.client, kept) == 200

        # now a delete this replica cannot hear: made while its subscription is down
        gone = (await embed(gw.client, png_bytes(seed=62)))["image_id"]
        await listener.close()
        other = raw(private_redis.url)
        key = redis_key(gw, gone)
        with other.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.incr(f"{gw.state.settings.redis_key_prefix}:deletes")
            pipe.execute()
        assert await segment_status(gw.client, gone) == 200  # still in L1: it missed it
        listener.start()
        await asyncio.wait_for(listener.subscribed.wait(), 5)
        assert await segment_status(gw.client, gone) == 404
        assert gw.metric("esam_cache_invalidations_total", {"source": "resync"}) == 1


@pytest.mark.slow
@pytest.mark.real_encoder  # the encodes must overlap
async def test_an_encode_longer_than_the_lock_ttl_keeps_its_lock(
    gateway_factory: GatewayFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock is renewed while encoding: a slow encode is not started twice by two replicas."""
    from service.core.encoders import EncodedImage, LocalEncoder
    from service.model.preprocess import ImageHeader

    real_encode = LocalEncoder.encode

    async def slow_encode(self: LocalEncoder, data: bytes, header: ImageHeader) -> EncodedImage:
        await asyncio.sleep(3.0)  # three lock TTLs
        return await real_encode(self, data, header)

    monkeypatch.setattr(LocalEncoder, "encode", slow_encode)
    image = png_bytes(seed=71)
    settings = {"cache": "redis", "redis_url": redis_url, "lock_ttl_s": 1.0}
    async with gateway_factory(**settings) as first, gateway_factory(**settings) as second:
        started = asyncio.create_task(embed(first.client, image))
        await asyncio.sleep(2.0)  # the first lock would have expired twice without renewal
        late = await embed(second.client, image)
        early = await started
    assert early["image_id"] == late["image_id"]
    assert first.encodes + second.encodes == 1
    assert second.metric("esam_singleflight_waits_total", {"scope": "redis_lock"}) == 1
