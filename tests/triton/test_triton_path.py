"""The gateway's Triton encoder against a real Triton server."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from devtools.triton import LocalTriton, grpc_request_of
from devtools.triton_config import MODEL
from service.core.encoders import local as local_encoder
from service.core.encoders.triton_endpoint import TritonEndpoint
from service.core.metrics import Metrics
from service.model import preprocess
from service.model.preprocess import read_header
from tests.conftest import Fixture
from tests.gateway.fixtures import GatewayFactory
from tests.model.conformance import LOGITS_ATOL, array_failures, mask_iou, unpack_masks
from tests.support import decode_logits, fixture_prompts, png_bytes, rle_mask
from tests.triton.fixtures import start_triton

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`

#: Bound for FP16 between preprocessing and encoder (it measures ≥ 0.9995 on the fixture).
REDUCED_WIRE_MIN_IOU = 0.995


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_same_embeddings_and_masks_as_the_fixture(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    fixture: Fixture,
    expected: dict[str, np.ndarray],
    image_bytes: bytes,
    protocol: str,
) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    async with gateway_factory(encoder="triton", triton_url=url, embedding_dtype="float32") as gw:
        assert (await gw.client.get("/readyz")).json()["encoder"] == "ok"
        npy = await gw.client.post(
            "/embed",
            content=image_bytes,
            headers={"Content-Type": "image/jpeg", "Accept": "application/x-npy"},
        )
        assert npy.status_code == 200, npy.text
        embedding = np.load(io.BytesIO(npy.content))
        assert array_failures({"image_embeddings": embedding}, expected) == []
        response = await gw.client.post(
            "/segment",
            json={
                "image_id": npy.headers["X-Image-Id"],
                "prompts": fixture_prompts(fixture),
                "return_logits": True,
            },
        )
    masks = unpack_masks(expected)
    for q, result in enumerate(response.json()["results"]):
        order = np.argsort(-expected["iou_multimask"][0, q], kind="stable")
        for rank, k in enumerate(order):
            candidate = result["candidates"][rank]
            logits = decode_logits(candidate)
            assert (
                np.abs(logits - expected["low_res_logits_multimask"][0, q, k]).max() <= LOGITS_ATOL
            )
            assert mask_iou(rle_mask(candidate), masks[q, k]) >= 0.99


@pytest.mark.parametrize("wire", ["fp16"])
async def test_reduced_precision_wire_keeps_the_masks(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    fixture: Fixture,
    expected: dict[str, np.ndarray],
    image_bytes: bytes,
    wire: str,
) -> None:
    async with gateway_factory(
        encoder="triton",
        triton_url=triton.grpc_url,
        triton_model=LocalTriton.model_for_wire(wire),
        embedding_dtype="float32",
    ) as gw:
        response = await gw.client.post(
            "/segment",
            json={
                "image": base64.b64encode(image_bytes).decode(),
                "prompts": fixture_prompts(fixture),
            },
        )
        assert response.status_code == 200, response.text
    masks = unpack_masks(expected)
    ious = []
    for q, result in enumerate(response.json()["results"]):
        order = np.argsort(-expected["iou_multimask"][0, q], kind="stable")
        ious += [
            mask_iou(rle_mask(result["candidates"][r]), masks[q, k]) for r, k in enumerate(order)
        ]
    assert min(ious) >= REDUCED_WIRE_MIN_IOU, ious


async def test_dynamic_batching_merges_concurrent_embeds(
    gateway_factory: GatewayFactory, triton: LocalTriton
) -> None:
    executions = triton.counter("nv_inference_exec_count")
    successes = triton.counter("nv_inference_request_success")
    async with gateway_factory(encoder="triton", triton_url=triton.grpc_url) as gw:
        images = [png_bytes(96, 64, seed=100 + i) for i in range(8)]
        responses = await asyncio.gather(
            *(
                gw.client.post("/embed", content=image, headers={"Content-Type": "image/png"})
                for image in images
            )
        )
        assert [r.status_code for r in responses] == [200] * 8
        assert gw.encodes == 8
    new_requests = triton.counter("nv_inference_request_success") - successes
    new_executions = triton.counter("nv_inference_exec_count") - executions
    assert new_requests == 8
    assert new_executions < new_requests, (new_executions, new_requests)


def log_size(triton: LocalTriton) -> int:
    assert triton.log_path is not None
    return triton.log_path.stat().st_size


async def execution_started(
    triton: LocalTriton, model: str, offset: int, timeout_s: float = 120
) -> None:
    """Until Triton's (verbose) log shows, past ``offset``, ``model`` executing a batch."""
    assert triton.log_path is not None
    needle = f"model {model}, instance ".encode()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with triton.log_path.open("rb") as log:
            log.seek(offset)
            lines = log.read().splitlines()
        if any(needle in line and b" executing " in line for line in lines):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model} did not start executing within {timeout_s} s")


async def test_an_error_in_one_request_spares_its_batch(triton: LocalTriton) -> None:
    async def infer(client: grpcclient.InferenceServerClient, pixels: np.ndarray) -> np.ndarray:
        infer_input = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        infer_input.set_data_from_numpy(pixels)
        result = await client.infer(MODEL, [infer_input])
        out: np.ndarray = result.as_numpy("embeddings")
        return out

    good = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    executions = triton.counter("nv_inference_exec_count")
    async with grpcclient.InferenceServerClient(triton.grpc_url.removeprefix("grpc://")) as client:
        offset = log_size(triton)
        busy = asyncio.create_task(infer(client, good))  # occupies the model instance
        await execution_started(triton, MODEL, offset)  # so the next two queue together
        results = await asyncio.gather(
            infer(client, bad), infer(client, good), return_exceptions=True
        )
        first = await busy
    failed, spared = results
    assert isinstance(failed, InferenceServerException)
    assert "NaN" in failed.message()
    assert isinstance(spared, np.ndarray)
    np.testing.assert_allclose(spared, first, atol=1e-5)
    # the bad and the good request were merged into one execution
    assert triton.counter("nv_inference_exec_count") - executions == 2


async def test_triton_down_gives_fast_503_then_recovers(
    gateway_factory: GatewayFactory, fixture: Fixture, tmp_path: Path
) -> None:
    server = start_triton(tmp_path, fixture.checkpoint)
    try:
        async with gateway_factory(encoder="triton", triton_url=server.grpc_url) as gw:
            ok = await gw.client.post(
                "/embed", content=png_bytes(seed=1), headers={"Content-Type": "image/png"}
            )
            assert ok.status_code == 200

            server.stop()
            for seed in (2, 3, 4, 5):
                start = time.monotonic()
                down = await gw.client.post(
                    "/embed", content=png_bytes(seed=seed), headers={"Content-Type": "image/png"}
                )
                assert down.status_code == 503, down.text
                assert down.json()["error"]["code"] == "encoder_unavailable"
                assert int(down.headers["Retry-After"]) >= 1
                # refused at once, not at the encode deadline (300 s)
                assert time.monotonic() - start < 10.0
            ready = await gw.client.get("/readyz")
            assert ready.status_code == 200  # still serving prompts on cached images
            assert ready.json()["encoder"] == "unavailable"
            assert len(gw.state.embeddings.cache.l1) == 1  # nothing cached for failed requests

            server.start()
            deadline = time.monotonic() + 120  # a restarted Triton loads its models first
            while True:
                again = await gw.client.post(
                    "/embed", content=png_bytes(seed=6), headers={"Content-Type": "image/png"}
                )
                if again.status_code == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert again.status_code == 200, again.text
            assert (await gw.client.get("/readyz")).json()["encoder"] == "ok"
    finally:
        server.stop()


async def test_an_image_that_fails_to_decode_in_triton_is_422(
    gateway_factory: GatewayFactory, triton: LocalTriton, image_bytes: bytes
) -> None:
    broken = image_bytes[: len(image_bytes) // 3]  # the header is intact, the pixels are not
    assert read_header(broken).width == 1072  # the gateway's own checks pass
    async with gateway_factory(encoder="triton", triton_url=triton.grpc_url) as gw:
        response = await gw.client.post(
            "/embed", content=broken, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_image"
        assert len(gw.state.embeddings.cache.l1) == 0  # nothing cached
        assert gw.metric("esam_encoder_circuit_state") == 0  # an answer, not an outage
        fine = await gw.client.post(
            "/embed", content=png_bytes(seed=77), headers={"Content-Type": "image/png"}
        )
        assert fine.status_code == 200, fine.text


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_triton_names_the_gateway_request_that_started_an_encode(
    gateway_factory: GatewayFactory, triton: LocalTriton, protocol: str
) -> None:
    """An operator can follow one request from the gateway's log into Triton's."""
    assert triton.log_path is not None
    request_id = f"trace-me-{protocol}"
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    async with gateway_factory(encoder="triton", triton_url=url) as gw:
        response = await gw.client.post(
            "/embed",
            content=png_bytes(seed=300 if protocol == "grpc" else 301),
            headers={"Content-Type": "image/png", "X-Request-Id": request_id},
        )
        assert response.status_code == 200, response.text
        assert response.headers["X-Request-Id"] == request_id
    assert f"[request id: {request_id}]" in triton.log_path.read_text()


async def test_the_gateway_only_reads_the_header_on_the_triton_path(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    image_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the gateway decoded an image")

    for module in (preprocess, local_encoder):
        for name in ("load_for_model", "open_image", "decode_image"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_decoding)
    async with gateway_factory(encoder="triton", triton_url=triton.grpc_url) as gw:
        response = await gw.client.post(
            "/embed", content=image_bytes, headers={"Content-Type": "image/jpeg"}
        )
        assert response.status_code == 200, response.text
        assert (response.json()["width"], response.json()["height"]) == (1072, 603)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_an_encode_may_take_longer_than_a_readiness_probe(
    triton: LocalTriton, image_bytes: bytes, protocol: str
) -> None:
    """Only the encode deadline bounds an encode (a 1080p image takes ~1.5 s on this CPU;
    the HTTP client's own timeout once cut it at the 2 s meant for probes)."""
    port = triton.grpc_port if protocol == "grpc" else triton.http_port
    endpoint = TritonEndpoint(
        f"127.0.0.1:{port}",
        protocol=protocol,
        model_name="efficientsam",
        metrics=Metrics(),
        probe_timeout_s=0.05,
    )
    await endpoint.start()
    try:
        call = endpoint.breaker.acquire()
        assert call is not None
        start = time.monotonic()
        encoded = await endpoint.infer(image_bytes, 60, call)
        assert time.monotonic() - start > 0.05  # the encode outlasted a probe's timeout
    finally:
        await endpoint.close()
    assert (encoded.width, encoded.height) == (1072, 603)


def test_an_image_travels_as_its_bytes(image_bytes: bytes) -> None:
    """What the gateway puts on the wire: the file plus framing, not a 6-12 MiB tensor."""
    endpoint = TritonEndpoint(
        "127.0.0.1:1", protocol="grpc", model_name="efficientsam", metrics=Metrics()
    )
    infer_input, outputs = endpoint._request(image_bytes)
    request = grpc_request_of(infer_input, outputs)
    assert len(image_bytes) < request.ByteSize() <= len(image_bytes) + 1024
