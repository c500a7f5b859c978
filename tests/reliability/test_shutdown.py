"""SIGTERM under load: in-flight requests finish, new ones are refused, no half-written record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.core.embedding import Embedding
from service.devtools.loadgen import jpeg_image
from tests.conftest import Fixture
from tests.services import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the gateway exited during start-up"
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail("the gateway did not become ready")


async def test_sigterm_finishes_in_flight_requests(
    fixture: Fixture, private_redis: RedisServer
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prefix = "shutdown-test"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ESAM_")},
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_CACHE": "redis",
        "ESAM_REDIS_URL": private_redis.url,
        "ESAM_REDIS_KEY_PREFIX": prefix,
        "ESAM_PORT": str(port),
        "ESAM_ENCODER_MAX_BATCH": "1",
        "ESAM_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO)
    try:
        await wait_ready(url, process)
        images = [jpeg_image(7000 + i, (320, 240)) for i in range(4)]
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            in_flight = [
                asyncio.create_task(
                    client.post("/embed", content=image, headers={"Content-Type": "image/jpeg"})
                )
                for image in images
            ]
            await asyncio.sleep(1.0)  # all four accepted; they encode one after another
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(httpx.TransportError):
                async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
                    await fresh.get("/healthz")  # new connections are refused
            responses = await asyncio.gather(*in_flight)
        assert [r.status_code for r in responses] == [200] * 4
        # uvicorn re-raises SIGTERM once its graceful shutdown is done
        assert process.wait(60) in (0, -signal.SIGTERM)
        client_redis = redis.Redis.from_url(private_redis.url)
        keys = list(client_redis.scan_iter(f"{prefix}:emb:*"))
        assert sorted(k.decode().rsplit(":", 1)[1] for k in keys) == sorted(
            r.json()["image_id"] for r in responses
        )
        for key in keys:  # every record is whole
            record = Embedding.from_bytes(client_redis.get(key) or b"")
            assert (record.width, record.height) == (320, 240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
