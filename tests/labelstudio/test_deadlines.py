"""Label Studio gives /health 1 s and /setup 3 s (ML_TIMEOUT_HEALTH, ML_TIMEOUT_SETUP):
both hold while the encoder is busy with new images, in a real gateway process."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from devtools.gateway_process import GatewayProcess
from tests.conftest import Fixture
from tests.support import CONFIG

pytestmark = pytest.mark.slow  # a real Label Studio, or a gateway process: not in `make test-fast`


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


async def test_health_and_setup_answer_within_label_studios_timeouts_under_load(
    fixture: Fixture,
) -> None:
    images = [photo(seed) for seed in range(6)]
    with GatewayProcess({"ESAM_CHECKPOINT": str(fixture.checkpoint)}) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as client:
            jpeg = {"Content-Type": "image/jpeg"}
            embeds = [
                asyncio.create_task(client.post("/embed", content=i, headers=jpeg)) for i in images
            ]
            await asyncio.sleep(1.0)  # the encoder is at work
            setup = {"project": "1.1", "schema": CONFIG}
            for _ in range(5):
                health = await client.get("/labelstudio/health", timeout=1.0)  # LS's own limit
                assert health.status_code == 200
                answered = await client.post("/labelstudio/setup", json=setup, timeout=3.0)
                assert answered.status_code == 200
            assert not all(e.done() for e in embeds)  # the checks ran under load
            for response in await asyncio.gather(*embeds):
                assert response.status_code == 200
