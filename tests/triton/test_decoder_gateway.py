"""ESAM_DECODER=triton: the gateway's clicks decoded by efficientsam_decoder in a real
Triton, against the in-process decoder's answers."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools.triton import LocalTriton
from devtools.triton_config import DECODER
from tests.conftest import Fixture
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.model.conformance import mask_iou
from tests.support import decode_logits, fixture_prompts, rle_mask
from tests.triton.fixtures import start_triton

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`

JPEG = {"Content-Type": "image/jpeg"}


async def upload(gw: Gateway, image: bytes) -> str:
    response = await gw.client.post("/embed", content=image, headers=JPEG)
    assert response.status_code == 200, response.text
    image_id: str = response.json()["image_id"]
    return image_id


async def click(gw: Gateway, image_id: str, prompts: list[dict[str, Any]], **options: Any) -> Any:
    body = {"image_id": image_id, "prompts": prompts, **options}
    response = await gw.client.post("/segment", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def sends(gw: Gateway) -> float:
    return gw.metric("esam_decoder_embedding_sends_total")


@pytest.mark.parametrize(("protocol", "dtype"), [("grpc", "int8"), ("http", "float16")])
async def test_clicks_equal_the_local_decoders_and_send_the_embedding_once(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    fixture: Fixture,
    image_bytes: bytes,
    protocol: str,
    dtype: str,
) -> None:
    """The embedding travels as the gateway caches it: int8 with its scales (1 MiB), or
    FP16 (2 MiB)."""
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    prompts = fixture_prompts(fixture)
    async with gateway_factory(embedding_dtype=dtype) as local:
        want = await click(local, await upload(local, image_bytes), prompts, return_logits=True)
    # a fresh key prefix per gateway, but the decoder's cache is keyed by model and image:
    # another test may have made this image resident already, so count from here
    async with gateway_factory(
        encoder="triton", decoder="triton", triton_url=url, embedding_dtype=dtype
    ) as gw:
        assert gw.state.decoder.name == "triton"
        image_id = await upload(gw, image_bytes)
        before = sends(gw)
        sent_before = gw.metric("esam_decoder_sent_bytes_total")
        got = await click(gw, image_id, prompts, return_logits=True)
        assert sends(gw) - before <= 1  # at most once: the first click of a new image
        if sends(gw) > before:  # this click carried the embedding: its bytes as cached
            embedding_bytes = 256 * 64 * 64 + 256 * 4 if dtype == "int8" else 2 * 256 * 64 * 64
            sent = gw.metric("esam_decoder_sent_bytes_total") - sent_before
            assert embedding_bytes < sent < embedding_bytes + 4096
        for mine, theirs in zip(got["results"], want["results"], strict=True):
            assert len(mine["candidates"]) == len(theirs["candidates"]) == 3
            for a, b in zip(mine["candidates"], theirs["candidates"], strict=True):
                assert abs(a["score"] - b["score"]) <= 1e-4
                assert mask_iou(rle_mask(a), rle_mask(b)) >= 0.99
                assert a["mask"]["size"] == [603, 1072]
                assert abs(a["area"] - b["area"]) <= 0.01 * max(b["area"], 1)
                assert np.abs(decode_logits(a) - decode_logits(b)).max() < 1e-3
        # resident now: more clicks, no embedding sent
        settled = sends(gw)
        for _ in range(3):
            await click(gw, image_id, prompts[:1], mask_format="none")
        assert sends(gw) == settled
        # best_only and single through Triton too
        best = await click(gw, image_id, prompts, best_only=True)
        for one, three in zip(best["results"], got["results"], strict=True):
            (kept,) = one["candidates"]
            assert kept["score"] == max(c["score"] for c in three["candidates"])
        single = await click(gw, image_id, prompts, multimask=False, mask_format="png")
        assert all(len(r["candidates"]) == 1 for r in single["results"])
        assert all(isinstance(r["candidates"][0]["mask"], str) for r in single["results"])


async def test_the_local_encoder_with_the_triton_decoder(
    gateway_factory: GatewayFactory, triton: LocalTriton, fixture: Fixture, image_bytes: bytes
) -> None:
    """ESAM_ENCODER=local, ESAM_DECODER=triton: the decoder gets a pool of its own."""
    async with gateway_factory(decoder="triton", triton_url=triton.grpc_url) as gw:
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200
        assert (ready.json()["decoder"], ready.json()["detail"]) == ("ok", None)
        image_id = await upload(gw, image_bytes)
        answer = await click(gw, image_id, fixture_prompts(fixture)[:2])
        assert [len(r["candidates"]) for r in answer["results"]] == [3, 3]


async def test_clicks_of_many_images_share_decoder_executions(
    gateway_factory: GatewayFactory, triton: LocalTriton, fixture: Fixture
) -> None:
    from tests.support import png_bytes

    images = [png_bytes(seed=900 + i) for i in range(6)]
    prompt = [{"points": [[20, 20]], "labels": [1]}]
    async with gateway_factory(
        encoder="triton", decoder="triton", triton_url=triton.grpc_url, max_pending_encodes=64
    ) as gw:
        ids = await asyncio.gather(*(upload(gw, image) for image in images))
        await asyncio.gather(*(click(gw, i, prompt) for i in ids))  # resident
        requests = triton.counter("nv_inference_count", DECODER)
        executions = triton.counter("nv_inference_exec_count", DECODER)
        await asyncio.gather(*(click(gw, i, prompt) for i in ids for _ in range(3)))
        requests = triton.counter("nv_inference_count", DECODER) - requests
        executions = triton.counter("nv_inference_exec_count", DECODER) - executions
        assert requests == 18
        assert executions < requests


async def test_a_triton_restart_under_clicks_fails_none(
    gateway_factory: GatewayFactory, fixture: Fixture, image_bytes: bytes, tmp_path: Path
) -> None:
    """While Triton restarts, clicks are decoded by the gateway's own decoder (none fails);
    the restart loses residency, so Triton's next click gets the embedding again. With
    ESAM_DECODER_FALLBACK=false a click meanwhile is 503 with Retry-After."""
    server = start_triton(tmp_path, fixture.checkpoint, decoder=True)
    prompts = fixture_prompts(fixture)[:1]
    settings = {
        "encoder": "triton",
        "decoder": "triton",
        "triton_url": server.grpc_url,
        "decode_timeout_s": 60,
    }
    try:
        async with (
            gateway_factory(**settings) as gw,
            gateway_factory(**settings, decoder_fallback=False) as strict,
        ):
            image_id = await upload(gw, image_bytes)
            await upload(strict, image_bytes)
            first = await click(gw, image_id, prompts)
            await click(strict, image_id, prompts)
            assert sends(gw) <= 1  # the other gateway may have made it resident first
            clicking = True
            answers: list[int] = []

            async def annotator() -> None:
                while clicking:
                    body = {"image_id": image_id, "prompts": prompts, "mask_format": "none"}
                    response = await gw.client.post("/segment", json=body)
                    answers.append(response.status_code)
                    await asyncio.sleep(0.05)

            task = asyncio.create_task(annotator())
            await asyncio.sleep(1.0)
            await asyncio.to_thread(server.stop)
            during = await click(gw, image_id, prompts)  # decoded here meanwhile
            refused = await strict.client.post(
                "/segment", json={"image_id": image_id, "prompts": prompts}
            )
            await asyncio.to_thread(server.start)
            # until the clicks reach Triton again (its circuit closes once it is ready)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while True:
                fallbacks = gw.metric("esam_decoder_fallbacks_total")
                again = await click(gw, image_id, prompts)
                if gw.metric("esam_decoder_fallbacks_total") == fallbacks:
                    break
                assert loop.time() < deadline, "the clicks never went back to Triton"
                await asyncio.sleep(0.2)
            clicking = False
            await task
            assert set(answers) == {200}  # no click failed
            assert gw.metric("esam_decoder_fallbacks_total") >= 1
            for result in (during, again):
                for a, b in zip(
                    result["results"][0]["candidates"],
                    first["results"][0]["candidates"],
                    strict=True,
                ):
                    assert mask_iou(rle_mask(a), rle_mask(b)) >= 0.99
                    assert abs(a["score"] - b["score"]) <= 1e-4
            assert sends(gw) >= 2  # residency was lost with the restart: sent again
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "decoder_unavailable"
            assert int(refused.headers["Retry-After"]) >= 1
    finally:
        server.stop()


async def test_a_full_decoder_queue_answers_429_at_once(
    gateway_factory: GatewayFactory, triton: LocalTriton, fixture: Fixture, image_bytes: bytes
) -> None:
    prompts = fixture_prompts(fixture)
    async with gateway_factory(
        encoder="triton", decoder="triton", triton_url=triton.grpc_url, max_pending_decodes=1
    ) as gw:
        image_id = await upload(gw, image_bytes)
        body = {"image_id": image_id, "prompts": prompts}
        responses = await asyncio.gather(*(gw.client.post("/segment", json=body) for _ in range(4)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses[0] == 200, statuses
        assert statuses[-1] == 429, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1


async def test_a_decoder_holding_another_checkpoint_takes_the_gateway_out_of_service(
    gateway_factory: GatewayFactory, triton: LocalTriton, image_bytes: bytes
) -> None:
    """The gateway serves random weights, Triton's decoder the fixture's checkpoint: its
    masks would be another model's, so readiness says so (both models named) and a click
    is refused, never answered with them."""
    async with gateway_factory(
        checkpoint="random", decoder="triton", triton_url=triton.grpc_url
    ) as gw:
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert (body["status"], body["decoder"]) == ("not_ready", "mismatch")
        assert "efficientsam-ti-RANDOM-WEIGHTS" in body["detail"]  # the gateway's
        assert gw.state.model_id in body["detail"]
        fixture_digest = next(
            part for part in body["detail"].split() if part.startswith("efficientsam-ti-a")
        )
        assert "RANDOM" not in fixture_digest  # and the decoder's, by its digest
        image_id = await upload(gw, image_bytes)
        response = await gw.client.post(
            "/segment",
            json={"image_id": image_id, "prompts": [{"points": [[9, 9]], "labels": [1]}]},
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "decoder_unavailable"
        assert "model mismatch" in response.json()["error"]["message"]


async def test_edges_run_in_triton_beside_the_resident_embedding(
    gateway_factory: GatewayFactory, triton: LocalTriton, image_bytes: bytes
) -> None:
    """POST /edges with ESAM_DECODER=triton: one edge request to efficientsam_decoder, the
    same map as the gateway's own decoder makes; with crops, the gateway's own decoder."""
    body = {"points_per_side": 2, "points_per_batch": 4}
    npy = {"Accept": "application/x-npy"}
    async with gateway_factory(embedding_dtype="float16") as local:
        image_id = await upload(local, image_bytes)
        here = await local.client.post("/edges", json={"image_id": image_id, **body}, headers=npy)
        assert here.status_code == 200, here.text
    async with gateway_factory(
        decoder="triton", triton_url=triton.grpc_url, embedding_dtype="float16"
    ) as gw:
        await upload(gw, image_bytes)
        requests = triton.counter("nv_inference_count", DECODER)
        there = await gw.client.post("/edges", json={"image_id": image_id, **body}, headers=npy)
        assert there.status_code == 200, there.text
        assert 1 <= triton.counter("nv_inference_count", DECODER) - requests <= 2  # + a resend
        assert gw.metric("esam_edges_duration_seconds_count") == 1
        assert gw.metric("esam_decoder_fallbacks_total") == 0
        got = np.load(io.BytesIO(there.content))
        want = np.load(io.BytesIO(here.content))
        assert got.shape == want.shape == (603, 1072)
        assert np.abs(got - want).max() <= 1e-4
        assert there.headers["X-Masks"] == here.headers["X-Masks"]
        steps = {part.split(";")[0].strip() for part in there.headers["Server-Timing"].split(",")}
        assert steps == {"decode", "nms", "edges", "thin"}

        # crops have embeddings of their own, not resident: the gateway's decoder
        requests = triton.counter("nv_inference_count", DECODER)
        image = base64.b64encode(image_bytes).decode()
        cropped = await gw.client.post(
            "/edges", json={"image": image, "crop_n_layers": 1, "points_per_side": 1}
        )
        assert cropped.status_code == 200, cropped.text
        assert triton.counter("nv_inference_count", DECODER) == requests
