"""Faults in the middle of a load run, against gateway + a real local Triton + a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from devtools.loadgen import LoadConfig, jpeg_image, run_load
from devtools.triton import LocalTriton
from service.core.embedding import Embedding
from service.model import EfficientSam
from service.model.preprocess import decode_image, resize_to_model
from tests.conftest import Fixture
from tests.gateway.fixtures import GatewayFactory
from tests.services import RedisServer, stored_record
from tests.triton.fixtures import start_triton

pytestmark = pytest.mark.slow  # faults in real servers under load: not in `make test-fast`


def small_load(annotators: int, images: int, seed: int) -> LoadConfig:
    return LoadConfig(
        annotators=annotators,
        images_per_annotator=images,
        seed=seed,
        image_size=(320, 240),
        prompts_per_image=(3, 5),
    )


async def test_redis_killed_mid_load_loses_no_request(
    gateway_factory: GatewayFactory, triton: LocalTriton, private_redis: RedisServer
) -> None:
    async with gateway_factory(
        encoder="triton",
        triton_url=triton.grpc_url,
        cache="redis",
        redis_url=private_redis.url,
        redis_timeout_s=0.3,
        redis_retry_s=0.5,
    ) as gw:
        config = small_load(annotators=4, images=4, seed=1)
        load = asyncio.create_task(run_load(gw.client, config))
        await asyncio.sleep(2.0)
        private_redis.stop()
        # a lookup of our own during the outage, whatever the load is doing at that moment
        probe = await gw.client.post(
            "/segment",
            json={"image_id": "0" * 64, "prompts": [{"points": [[1, 1]], "labels": [1]}]},
        )
        assert probe.status_code == 404
        await asyncio.sleep(4.0)
        private_redis.start()
        result = await load
        # the outage really happened during the run, whichever operation met it first
        assert gw.metric_sum("esam_redis_errors_total") >= 1
        # after Redis came back (empty), the shared tier is written again
        response = await gw.client.post(
            "/embed", content=jpeg_image(999, (320, 240)), headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200
        assert gw.metric("esam_redis_up") == 1
    assert result.failed == [], result.failed[:5]
    assert result.unexpected == [], result.unexpected[:5]
    assert len(result.samples) > 20


async def test_triton_stopped_mid_load_fails_fast_then_recovers(
    gateway_factory: GatewayFactory,
    fixture: Fixture,
    fixture_model: EfficientSam,
    private_redis: RedisServer,
    tmp_path: Path,
) -> None:
    server = start_triton(tmp_path, fixture.checkpoint)
    # above an encode of the load's images by a Triton just restarted (its first encodes
    # are slow, over 10 s once on the busy 2-core CI machine); a stopped Triton is a 503
    # at once, whatever the deadline
    deadline_s = 30.0
    try:
        async with gateway_factory(
            encoder="triton",
            triton_url=server.grpc_url,
            cache="redis",
            redis_url=private_redis.url,
            encode_timeout_s=deadline_s,
        ) as gw:
            config = small_load(annotators=4, images=5, seed=2)
            load = asyncio.create_task(run_load(gw.client, config))
            await asyncio.sleep(3.0)
            await asyncio.to_thread(server.stop)  # the load keeps running meanwhile
            await asyncio.sleep(3.0)
            await asyncio.to_thread(server.start)
            result = await load
            ready_by = asyncio.get_running_loop().time() + 15
            while (await gw.client.get("/readyz")).json()["encoder"] != "ok":
                assert asyncio.get_running_loop().time() < ready_by, "not ready again"
                await asyncio.sleep(0.2)
            # a ready Triton closes the circuit: the next upload is served
            probe = await gw.client.post(
                "/embed",
                content=jpeg_image(4242, (320, 240)),
                headers={"Content-Type": "image/jpeg"},
            )
            assert probe.status_code == 200, probe.text

            unavailable = [s for s in result.samples if s.status == 503]
            assert unavailable, "the outage was not hit"
            assert {s.code for s in unavailable} == {"encoder_unavailable"}
            assert all(s.route == "/embed" for s in unavailable)  # cached images kept working
            assert max(s.latency_s for s in result.samples) < deadline_s + 2  # none hung
            assert {s.status for s in result.failed} == {503}
            assert result.unexpected == []

            # success returns without restarting the gateway
            after = await run_load(gw.client, small_load(annotators=2, images=2, seed=3))
            assert after.failed == [], after.failed
            embedded = result.image_ids | after.image_ids | {probe.json()["image_id"]}

            # nothing cached wrong: only embeddings of successful uploads, equal to a local encode
            client = redis.Redis.from_url(private_redis.url)
            prefix = gw.state.settings.redis_key_prefix
            keys = [k.decode() for k in client.scan_iter(f"{prefix}:emb:*")]
            assert {k.rsplit(":", 1)[1] for k in keys} <= embedded
            # the first image of annotator 0 in each run: the one of the run after the outage
            # must be there (stored_record fails otherwise); the one of the run with the outage,
            # if its upload got through
            for image_seed, required in ((2 * 100_000, False), (3 * 100_000, True)):
                image = jpeg_image(image_seed, (320, 240))
                key = gw.state.embeddings.key(hashlib.sha256(image).hexdigest())
                if not required and not client.exists(f"{prefix}:emb:{key}"):
                    continue  # its upload fell into the outage
                record = stored_record(client, f"{prefix}:emb:{key}")
                stored = Embedding.from_bytes(record)
                assert stored.dtype == gw.state.settings.embedding_dtype
                cached = stored.as_float32()
                with torch.inference_mode():
                    local = fixture_model.embed(resize_to_model(decode_image(image))[None]).numpy()
                # int8 storage (the default): half a step of each channel (its peak / 127),
                # plus the FP16 that Triton answers in
                step = np.abs(local).max(axis=(0, 2, 3)) / 127
                assert (np.abs(cached - local) <= step[None, :, None, None] / 2 + 2e-2).all()
    finally:
        server.stop()
