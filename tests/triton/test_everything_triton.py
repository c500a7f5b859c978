"""Segment everything on the Triton deployment: the embedding (and each crop's) from Triton."""

from __future__ import annotations

import base64

import pytest

from devtools.triton import LocalTriton
from tests.conftest import Everything
from tests.gateway.fixtures import GatewayFactory
from tests.model.conformance import mask_iou
from tests.support import request_body, rle_mask

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`


async def test_everything_on_a_triton_embedding_reproduces_the_fixture(
    gateway_factory: GatewayFactory,
    triton: LocalTriton,
    image_bytes: bytes,
    everything: Everything,
) -> None:
    params, expected = everything
    async with gateway_factory(
        encoder="triton", triton_url=triton.grpc_url, embedding_dtype="float32"
    ) as gw:
        image = base64.b64encode(image_bytes).decode()
        response = await gw.client.post(
            "/segment/everything", json={"image": image, **request_body(params)}
        )
        assert response.status_code == 200, response.text
        masks = response.json()["masks"]
        assert len(masks) == params["count"]
        for k, item in enumerate(masks):
            assert mask_iou(rle_mask(item), expected["masks"][k]) >= 0.99, k
            assert abs(item["predicted_iou"] - expected["predicted_iou"][k]) <= 5e-4, k
        assert gw.encodes == 1

        # crops travel to Triton as PNG files, one encode each
        crops = {"image": image, "crop_n_layers": 1, "points_per_side": 1, "mask_format": "none"}
        response = await gw.client.post("/segment/everything", json=crops)
        assert response.status_code == 200, response.text
        assert gw.encodes == 5
