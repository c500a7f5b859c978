"""Embeddings through shared memory (``ESAM_TRITON_SHARED_MEMORY=system``) with a real Triton
on this host: the same numbers, regions cleaned up, and no region reused while Triton may
still write into it."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from devtools.triton import LocalTriton
from devtools.triton_config import ENSEMBLE
from service.core.encoders import triton_shm
from service.core.encoders.base import EncodedImage
from service.core.encoders.triton_endpoint import TritonEndpoint
from service.core.metrics import Metrics
from tests.conftest import Fixture
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.model.conformance import array_failures
from tests.support import png_bytes
from tests.triton.fixtures import start_triton

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`

NPY = {"Content-Type": "image/jpeg", "Accept": "application/x-npy"}


def triton_regions(server: LocalTriton) -> list[str]:
    """Names of the system shared-memory regions registered with Triton, ours only."""
    status = httpx.get(f"{server.http_url}/v2/systemsharedmemory/status", timeout=5).json()
    prefix = f"esam_{os.getpid()}_"
    return [region["name"] for region in status if region["name"].startswith(prefix)]


def our_shm_files() -> list[str]:
    return sorted(p.name for p in triton_shm.SHM_DIR.glob(f"esam_{os.getpid()}_*"))


async def embed_at_once(
    gw: Gateway, images: list[bytes], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """``/embed`` of every PNG at the same time."""
    headers = {**(headers or {}), "Content-Type": "image/png"}
    return list(
        await asyncio.gather(
            *(gw.client.post("/embed", content=image, headers=headers) for image in images)
        )
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_embeddings_through_shared_memory_match_the_fixture(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    expected: dict[str, np.ndarray],
    image_bytes: bytes,
    protocol: str,
) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    async with gateway_factory(
        encoder="triton",
        triton_url=url,
        triton_shared_memory="system",
        embedding_dtype="float32",
    ) as gw:
        response = await gw.client.post("/embed", content=image_bytes, headers=NPY)
        assert response.status_code == 200, response.text
        embedding = np.load(io.BytesIO(response.content))
        assert array_failures({"image_embeddings": embedding}, expected) == []
        # Triton wrote it into our memory: one region, registered, of the FP32 output's size
        registered = triton_regions(triton)
        assert len(registered) == 1, registered
        assert our_shm_files() == registered
        region = (triton_shm.SHM_DIR / registered[0]).stat()
        assert region.st_size == 256 * 64 * 64 * 4
        # Triton (another user, given the gateway's group) may open it for writing
        assert stat.S_IMODE(region.st_mode) == 0o660
    # closed with the gateway: unregistered from Triton, and gone from /dev/shm
    assert triton_regions(triton) == []
    assert our_shm_files() == []


async def test_concurrent_encodes_each_get_their_own_region(
    gateway_factory: GatewayFactory, triton: LocalTriton
) -> None:
    images = [png_bytes(160, 120, seed=400 + i) for i in range(6)]
    async with gateway_factory(
        encoder="triton", triton_url=triton.grpc_url, triton_shared_memory="system"
    ) as gw:
        shared = await embed_at_once(gw, images, NPY)
        regions = triton_regions(triton)
    async with gateway_factory(encoder="triton", triton_url=triton.grpc_url) as gw:
        in_band = [
            await gw.client.post(
                "/embed", content=image, headers={**NPY, "Content-Type": "image/png"}
            )
            for image in images
        ]
    assert [r.status_code for r in shared] == [200] * len(images)
    assert 2 <= len(regions) <= len(images), regions  # reused, but never shared by two calls
    for a, b in zip(shared, in_band, strict=True):
        np.testing.assert_array_equal(
            np.load(io.BytesIO(a.content)), np.load(io.BytesIO(b.content))
        )


async def test_regions_are_registered_again_after_triton_restarts(
    gateway_factory: GatewayFactory,
    fixture: Fixture,
    expected: dict[str, np.ndarray],
    image_bytes: bytes,
    tmp_path: Path,
) -> None:
    server = start_triton(tmp_path, fixture.checkpoint)
    try:
        async with gateway_factory(
            encoder="triton",
            triton_url=server.grpc_url,
            triton_shared_memory="system",
            embedding_dtype="float32",
        ) as gw:
            before = await embed_at_once(gw, [png_bytes(seed=seed) for seed in (5, 6, 7)])
            assert [r.status_code for r in before] == [200] * 3
            regions = len(triton_regions(server))
            assert regions >= 2  # a pool of free regions, each unknown to the next server
            server.stop()
            server.start()  # the same ports; it knows none of our regions
            assert triton_regions(server) == []
            again = await gw.client.post("/embed", content=image_bytes, headers=NPY)
            assert again.status_code == 200, again.text
            embedding = np.load(io.BytesIO(again.content))
            assert array_failures({"image_embeddings": embedding}, expected) == []
            for seed in (8, 9, 10):  # each free region is registered again before its use
                response = await gw.client.post(
                    "/embed", content=png_bytes(seed=seed), headers={"Content-Type": "image/png"}
                )
                assert response.status_code == 200, response.text
            assert server.counter("nv_inference_request_failure", model=ENSEMBLE) == 0
            assert len(triton_regions(server)) <= regions
    finally:
        server.stop()


async def infer(endpoint: TritonEndpoint, data: bytes, timeout_s: float) -> EncodedImage:
    call = endpoint.breaker.acquire()
    assert call is not None
    return await endpoint.infer(data, timeout_s, call)


async def test_a_region_triton_may_still_write_into_is_not_reused(
    triton: LocalTriton, image_bytes: bytes
) -> None:
    endpoint = TritonEndpoint(
        f"127.0.0.1:{triton.grpc_port}",
        protocol="grpc",
        model_name=ENSEMBLE,
        metrics=Metrics(),
        shared_memory=True,
    )
    await endpoint.start()
    try:
        reference = await infer(endpoint, png_bytes(seed=9), 60)
        with pytest.raises(TimeoutError):  # Triton goes on encoding into the region
            await infer(endpoint, image_bytes, 0.2)
        regions = endpoint._regions
        assert regions is not None
        assert [r.name for r in regions._retired] != []
        retired = regions._retired[0].name
        # the next call gets another region, and its numbers are its own
        again = await infer(endpoint, png_bytes(seed=9), 60)
        np.testing.assert_array_equal(again.embedding, reference.embedding)
        await asyncio.sleep(3)  # Triton has long finished the abandoned call
        await infer(endpoint, png_bytes(seed=10), 60)
        assert regions._retired == []  # reclaimed: unregistered and destroyed
        assert retired not in triton_regions(triton)
        assert retired not in our_shm_files()
    finally:
        await endpoint.close()
    assert triton_regions(triton) == []


async def test_a_triton_that_cannot_map_our_memory_gets_embeddings_in_its_answers(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a Triton on another host sees: a key it cannot open."""
    create = triton_shm.OutputRegions._create

    def elsewhere(self: triton_shm.OutputRegions) -> Any:
        return dataclasses.replace(create(self), key="/esam_not_on_this_host")

    monkeypatch.setattr(triton_shm.OutputRegions, "_create", elsewhere)
    async with gateway_factory(
        encoder="triton", triton_url=triton.grpc_url, triton_shared_memory="system"
    ) as gw:
        with caplog.at_level(logging.ERROR):
            # concurrent first calls: each is refused a region, one of them says so
            responses = await embed_at_once(gw, [png_bytes(seed=seed) for seed in (11, 12, 13)])
            assert [r.status_code for r in responses] == [200] * 3, [r.text for r in responses]
            response = await gw.client.post(
                "/embed", content=png_bytes(seed=14), headers={"Content-Type": "image/png"}
            )
            assert response.status_code == 200, response.text
        assert gw.metric("esam_encoder_circuit_state") == 0
    errors = [r for r in caplog.records if "cannot use this process's shared memory" in r.message]
    assert len(errors) == 1  # said once, then the answers carry the embeddings
    assert triton_regions(triton) == []
    assert our_shm_files() == []


async def test_the_benchmarks_stand_in_encoder_answers_zeros_after_the_real_preprocessing(
    fixture: Fixture, image_bytes: bytes, tmp_path: Path
) -> None:
    """``bench/triton.py`` measures the gateway's CPU against it (``stand_in_encoder``)."""
    server = start_triton(tmp_path, fixture.checkpoint, output="fp16", stand_in_encoder=True)
    try:
        endpoint = TritonEndpoint(
            f"127.0.0.1:{server.grpc_port}", protocol="grpc", model_name=ENSEMBLE, metrics=Metrics()
        )
        await endpoint.start()
        try:
            encoded = await infer(endpoint, image_bytes, 60)
        finally:
            await endpoint.close()
    finally:
        server.stop()
    assert encoded.embedding.dtype == np.float16  # the config's output, as configured
    assert encoded.embedding.shape == (256, 64, 64)
    assert not encoded.embedding.any()
    assert (encoded.width, encoded.height) == (1072, 603)  # the real preprocessing's answer
