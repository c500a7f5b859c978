"""POST /embed in its three forms, the .npy variant, and the /embeddings routes."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np

from tests.gateway.fixtures import Gateway


async def test_raw_body_embeds_once_then_hits_the_cache(
    gateway: Gateway, image_bytes: bytes
) -> None:
    first = await gateway.client.post(
        "/embed", content=image_bytes, headers={"Content-Type": "image/jpeg"}
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["image_id"] == hashlib.sha256(image_bytes).hexdigest()
    assert (body["width"], body["height"]) == (1072, 603)
    assert body["cached"] is False
    assert body["model"] == gateway.state.model_id
    assert gateway.encodes == 1

    second = await gateway.client.post(
        "/embed", content=image_bytes, headers={"Content-Type": "image/jpeg"}
    )
    assert second.json()["cached"] is True
    assert gateway.encodes == 1
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


async def test_multipart_and_json_give_the_same_image_id(
    gateway: Gateway, image_bytes: bytes
) -> None:
    multipart = await gateway.client.post(
        "/embed", files={"image": ("dogs.jpg", image_bytes, "image/jpeg")}
    )
    assert multipart.status_code == 200, multipart.text
    as_json = await gateway.client.post(
        "/embed", json={"image": base64.b64encode(image_bytes).decode()}
    )
    assert as_json.status_code == 200, as_json.text
    data_url = await gateway.client.post(
        "/embed",
        json={"image": "data:image/jpeg;base64," + base64.b64encode(image_bytes).decode()},
    )
    expected = hashlib.sha256(image_bytes).hexdigest()
    assert multipart.json()["image_id"] == as_json.json()["image_id"] == expected
    assert data_url.json()["image_id"] == expected
    assert gateway.encodes == 1


async def test_npy_response_and_embedding_routes(gateway: Gateway, image_bytes: bytes) -> None:
    image_id = hashlib.sha256(image_bytes).hexdigest()
    assert (await gateway.client.head(f"/embeddings/{image_id}")).status_code == 404

    response = await gateway.client.post(
        "/embed",
        content=image_bytes,
        headers={"Content-Type": "image/jpeg", "Accept": "application/x-npy"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.shape == (1, 256, 64, 64)
    assert array.dtype == np.float16  # the default cache dtype
    assert response.headers["X-Image-Id"] == image_id
    assert (response.headers["X-Image-Width"], response.headers["X-Image-Height"]) == (
        "1072",
        "603",
    )
    assert response.headers["X-Cached"] == "false"
    assert response.headers["X-Model"] == gateway.state.model_id

    assert (await gateway.client.head(f"/embeddings/{image_id}")).status_code == 204
    fetched = await gateway.client.get(f"/embeddings/{image_id}")
    assert fetched.status_code == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(fetched.content)), array)

    assert (await gateway.client.delete(f"/embeddings/{image_id}")).status_code == 204
    assert (await gateway.client.head(f"/embeddings/{image_id}")).status_code == 404
    missing = await gateway.client.get(f"/embeddings/{image_id}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "embedding_not_found"


async def test_gzip_when_accepted(gateway: Gateway, image_bytes: bytes) -> None:
    await gateway.client.post("/embed", content=image_bytes, headers={"Content-Type": "image/jpeg"})
    image_id = hashlib.sha256(image_bytes).hexdigest()
    response = await gateway.client.post(
        "/segment",
        json={"image_id": image_id, "prompts": [{"points": [[580, 350]], "labels": [1]}]},
        headers={"Accept-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == "gzip"
    assert response.json()["image_id"] == image_id  # httpx decompressed it
