"""SIGTERM under load: in-flight requests finish, new ones are refused, no half-written record."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from devtools.gateway_process import GatewayProcess
from devtools.loadgen import jpeg_image
from devtools.prometheus import sample_sum
from service.core.embedding import Embedding
from tests.conftest import Fixture
from tests.services import RedisServer, stored_record

pytestmark = pytest.mark.slow  # faults in real servers under load: not in `make test-fast`


def encoding_gateway(
    fixture: Fixture,
    private_redis: RedisServer,
    prefix: str,
    *,
    grace_s: int,
    stderr: Path | None = None,
) -> GatewayProcess:
    """A gateway process that encodes one image at a time and keeps embeddings in Redis."""
    return GatewayProcess(
        {
            "ESAM_CHECKPOINT": str(fixture.checkpoint),
            "ESAM_CACHE": "redis",
            "ESAM_REDIS_URL": private_redis.url,
            "ESAM_REDIS_KEY_PREFIX": prefix,
            "ESAM_ENCODER_MAX_BATCH": "1",
            "ESAM_SHUTDOWN_GRACE_S": str(grace_s),
        },
        stderr=stderr,
    )


async def test_sigterm_finishes_in_flight_requests(
    fixture: Fixture, private_redis: RedisServer
) -> None:
    prefix = "shutdown-test"
    # four CPU encodes one after another on a busy machine may outlast the default 30 s
    gateway = encoding_gateway(fixture, private_redis, prefix, grace_s=300)
    gateway.start()
    process, url = gateway.process, gateway.url
    assert process is not None
    try:
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
            record = Embedding.from_bytes(stored_record(client_redis, key))
            assert (record.width, record.height) == (320, 240)
    finally:
        gateway.stop()


async def test_requests_past_the_grace_are_cancelled_and_nothing_half_done_is_kept(
    fixture: Fixture, private_redis: RedisServer, tmp_path: Path
) -> None:
    prefix = "grace-test"
    log = tmp_path / "gateway.log"
    gateway = encoding_gateway(fixture, private_redis, prefix, grace_s=1, stderr=log)
    gateway.start()
    process, url = gateway.process, gateway.url
    assert process is not None
    try:
        # six CPU encodes one after another: many seconds, far past a 1 s grace
        images = [jpeg_image(7100 + i, (320, 240)) for i in range(6)]
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def upload(image: bytes) -> int | None:
                try:
                    response = await client.post(
                        "/embed", content=image, headers={"Content-Type": "image/jpeg"}
                    )
                except httpx.TransportError:
                    return None  # the connection closed without an answer
                return response.status_code

            in_flight = [asyncio.create_task(upload(image)) for image in images]
            await asyncio.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*in_flight)
        assert process.wait(60) in (0, -signal.SIGTERM)
        answered = [s for s in statuses if s == 200]
        assert len(answered) < len(images), statuses  # the grace cut the last ones short
        assert set(statuses) <= {200, 500, None}, statuses  # 500: uvicorn's, for a cancelled one
        assert "cancelled after" in log.read_text()  # the gateway names what it gave up on
        # nothing half-done was cached: only whole records, no more than were answered 200
        client_redis = redis.Redis.from_url(private_redis.url)
        keys = list(client_redis.scan_iter(f"{prefix}:emb:*"))
        assert len(keys) <= len(answered) + 1  # + the encode whose store raced the cancel
        for key in keys:
            record = Embedding.from_bytes(stored_record(client_redis, key))
            assert (record.width, record.height) == (320, 240)
    finally:
        gateway.stop()


def encoded_so_far(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sample_sum(text, "esam_encoder_images_total")


async def test_sigterm_during_a_bulk_precompute_leaves_no_handler_behind(
    fixture: Fixture, private_redis: RedisServer, tmp_path: Path
) -> None:
    """``esam embed`` (bulk, 4 uploads in flight, retrying) is running when SIGTERM comes:
    the gateway answers what it holds and exits as soon as those encodes are done, long
    before its grace period; no handler is left waiting to be cancelled."""
    prefix = "bulk-shutdown"
    log = tmp_path / "gateway.log"
    grace_s = 120
    gateway = encoding_gateway(fixture, private_redis, prefix, grace_s=grace_s, stderr=log)
    gateway.start()
    process = gateway.process
    assert process is not None
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i in range(16):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg_image(7200 + i, (320, 240)))
    esam = shutil.which("esam", path=str(Path(sys.executable).parent))
    assert esam is not None
    precompute = subprocess.Popen(
        [esam, "embed", str(folder), "--concurrency", "4", "--url", gateway.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(1200):  # until the precompute is well under way
            if encoded_so_far(gateway.url) >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the precompute encoded nothing")
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(grace_s) in (0, -signal.SIGTERM)
        took_s = time.monotonic() - signalled
        report, errors = precompute.communicate(timeout=120)
        # the encodes in flight at the signal (4 at most, one after another) and no more
        assert took_s < grace_s / 2, took_s
        assert "cancelled after" not in log.read_text()
        client_redis = redis.Redis.from_url(private_redis.url)
        keys = list(client_redis.scan_iter(f"{prefix}:emb:*"))
        assert 2 <= len(keys) < 16
        assert b'"failed"' in report, errors[-3000:]  # it reports what it could not send
        for key in keys:  # every record is whole
            record = Embedding.from_bytes(stored_record(client_redis, key))
            assert (record.width, record.height) == (320, 240)
    finally:
        if precompute.poll() is None:
            precompute.kill()
            precompute.communicate(timeout=10)
        gateway.stop()
