"""POST /edges through HTTP: the map's formats and size, its headers, limits and errors."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.gateway.fixtures import Gateway, GatewayFactory

JPEG = {"Content-Type": "image/jpeg"}
NPY = {"Accept": "application/x-npy"}
SMALL = {"points_per_side": 3, "points_per_batch": 9}


async def embed(gateway: Gateway, image_bytes: bytes) -> str:
    response = await gateway.client.post("/embed", content=image_bytes, headers=JPEG)
    assert response.status_code == 200
    image_id: str = response.json()["image_id"]
    return image_id


async def test_a_png_of_the_image_size_and_the_same_map_as_npy(
    gateway: Gateway, image_bytes: bytes
) -> None:
    body = {"image": base64.b64encode(image_bytes).decode(), **SMALL}
    png = await gateway.client.post("/edges", json=body)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert png.headers["X-Cached"] == "false"
    picture = Image.open(io.BytesIO(png.content))
    assert picture.mode == "L"
    assert picture.size == (1072, 603)  # the original's, not the model's 1024²
    gray = np.asarray(picture)
    assert gray.max() == 255  # linearly normalised: the strongest edge is 1

    npy = await gateway.client.post("/edges", json=body, headers=NPY)
    assert npy.status_code == 200
    assert npy.headers["X-Cached"] == "true"
    strength = np.load(io.BytesIO(npy.content))
    assert strength.dtype == np.float32
    assert strength.shape == (603, 1072)
    assert strength.min() >= 0
    assert strength.max() == pytest.approx(1.0)
    assert np.array_equal(np.rint(strength * 255).astype(np.uint8), gray)  # deterministic

    headers = npy.headers
    assert headers["X-Image-Id"] == png.headers["X-Image-Id"]
    assert (headers["X-Image-Width"], headers["X-Image-Height"]) == ("1072", "603")
    assert headers["X-Model"] == gateway.state.model_id
    assert 1 <= int(headers["X-Masks"]) <= int(headers["X-Candidates"]) <= 27  # 3² × 3
    steps = dict(part.strip().split(";dur=") for part in headers["Server-Timing"].split(","))
    assert set(steps) == {"decode", "nms", "edges", "thin"}
    assert all(float(ms) >= 0 for ms in steps.values())
    assert gateway.metric("esam_edges_duration_seconds_count") == 2


async def test_by_id_with_thinning_off_gives_thicker_edges(
    gateway: Gateway, image_bytes: bytes
) -> None:
    image_id = await embed(gateway, image_bytes)
    thin = await gateway.client.post("/edges", json={"image_id": image_id, **SMALL}, headers=NPY)
    thick = await gateway.client.post(
        "/edges", json={"image_id": image_id, **SMALL, "edge_nms": False}, headers=NPY
    )
    assert thin.status_code == thick.status_code == 200
    assert thin.headers["X-Cached"] == "true"
    thinned = np.load(io.BytesIO(thin.content)) > 0
    wide = np.load(io.BytesIO(thick.content)) > 0
    assert (thinned <= wide).all()  # thinning only removes pixels
    assert thinned.sum() < wide.sum()


async def test_limits_and_errors(gateway_factory: GatewayFactory, image_bytes: bytes) -> None:
    async with gateway_factory(max_everything_prompts=20) as gw:
        image_id = await embed(gw, image_bytes)
        refused = await gw.client.post("/edges", json={"image_id": image_id, "points_per_side": 5})
        assert refused.status_code == 422  # 25 prompts
        assert "ESAM_MAX_EVERYTHING_PROMPTS" in refused.json()["error"]["message"]
        # the paper's 16² = 256 prompts are over this deployment's 20: its densest grid, 4²
        default = await gw.client.post("/edges", json={"image_id": image_id}, headers=NPY)
        assert default.status_code == 200
        assert int(default.headers["X-Candidates"]) <= 4 * 4 * 3
        missing = await gw.client.post("/edges", json={"image_id": "0" * 64, "points_per_side": 2})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "embedding_not_found"
        both = {"image_id": image_id, "image": base64.b64encode(image_bytes).decode()}
        assert (await gw.client.post("/edges", json=both)).status_code == 422
        for field, value in (("boundary_px", 0), ("box_nms_thresh", 2), ("edge_nms", "yes")):
            bad = await gw.client.post("/edges", json={"image_id": image_id, field: value})
            assert bad.status_code == 422
            assert field in bad.json()["error"]["message"]
        crops_by_id = await gw.client.post(
            "/edges", json={"image_id": image_id, "crop_n_layers": 1}
        )
        assert crops_by_id.status_code == 422


@pytest.mark.slow
async def test_an_edge_job_and_a_segment_everything_job_share_one_slot(
    gateway: Gateway, image_bytes: bytes
) -> None:
    image_id = await embed(gateway, image_bytes)
    slow = {"image_id": image_id, "points_per_side": 8}
    first = asyncio.create_task(gateway.client.post("/edges", json=slow))
    for _ in range(500):  # until the edge job holds this replica's slot
        await asyncio.sleep(0.01)
        if gateway.state.decoder.everything_jobs_running:
            break
    assert gateway.state.decoder.everything_jobs_running == 1
    for path in ("/edges", "/segment/everything"):
        second = await gateway.client.post(path, json=slow)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "overloaded"
        assert int(second.headers["Retry-After"]) >= 1
    assert (await first).status_code == 200
    assert gateway.state.decoder.everything_jobs_running == 0
