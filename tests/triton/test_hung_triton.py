"""A hung Triton (SIGSTOP): fast, bounded answers while it hangs; service again once it resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.triton import LocalTriton
from tests.conftest import Fixture
from tests.gateway.fixtures import GatewayFactory
from tests.support import png_bytes
from tests.triton.fixtures import start_triton

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`

DEADLINE_S = 20.0  # above one CPU encode of a small image, even on a busy machine (4 s was not)
RECOVERY_S = 120.0  # the same gateway serves again once Triton resumes, without a restart


@pytest.fixture
def own_triton(fixture: Fixture, tmp_path: Path) -> Iterator[LocalTriton]:
    """A Triton this test may freeze; resumed and stopped whatever happens."""
    server = start_triton(tmp_path, fixture.checkpoint)
    try:
        yield server
    finally:
        if server.process is not None:
            os.killpg(server.process.pid, signal.SIGCONT)
        server.stop()


async def warm_up(gateway_factory: GatewayFactory, server: LocalTriton) -> None:
    """One encode without the tests' deadline: a fresh Triton's first encode is several
    times slower than the next ones, past ``DEADLINE_S`` on a busy machine."""
    async with gateway_factory(
        encoder="triton", triton_url=server.grpc_url, encode_timeout_s=300
    ) as gw:
        response = await gw.client.post(
            "/embed", content=png_bytes(seed=0), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200, response.text


def freeze(server: LocalTriton, sig: signal.Signals) -> None:
    assert server.process is not None
    os.killpg(server.process.pid, sig)


async def test_hung_then_resumed(gateway_factory: GatewayFactory, own_triton: LocalTriton) -> None:
    await warm_up(gateway_factory, own_triton)
    async with gateway_factory(
        encoder="triton", triton_url=own_triton.grpc_url, encode_timeout_s=DEADLINE_S
    ) as gw:
        warm = await gw.client.post(
            "/embed", content=png_bytes(seed=1), headers={"Content-Type": "image/png"}
        )
        assert warm.status_code == 200, warm.text
        cached_id = warm.json()["image_id"]

        freeze(own_triton, signal.SIGSTOP)
        for seed in range(10, 16):  # past the breaker's threshold: it opens
            start = time.monotonic()
            hung = await gw.client.post(
                "/embed", content=png_bytes(seed=seed), headers={"Content-Type": "image/png"}
            )
            assert hung.status_code == 503, hung.text
            assert hung.json()["error"]["code"] == "encoder_unavailable"
            assert int(hung.headers["Retry-After"]) >= 1
            # answered at the deadline, not held while Triton hangs (the event loop of a busy
            # machine may add a little)
            assert time.monotonic() - start <= DEADLINE_S + 2.0
        assert gw.metric("esam_encoder_circuit_state") == 2  # open
        # prompts on a cached image need no encoder: still served, and the gateway stays ready
        click = await gw.client.post(
            "/segment",
            json={"image_id": cached_id, "prompts": [{"points": [[10, 10]], "labels": [1]}]},
        )
        assert click.status_code == 200, click.text
        ready = await gw.client.get("/readyz")
        assert (ready.status_code, ready.json()["encoder"]) == (200, "unavailable")

        freeze(own_triton, signal.SIGCONT)
        # Triton first works off the encodes it queued while hung (the gateway gave up on them,
        # Triton does not know): on a busy machine an attempt may meet the deadline meanwhile
        resumed = time.monotonic()
        while True:
            again = await gw.client.post(
                "/embed", content=png_bytes(seed=99), headers={"Content-Type": "image/png"}
            )
            if again.status_code == 200 or time.monotonic() - resumed > RECOVERY_S:
                break
            await asyncio.sleep(0.2)
        assert again.status_code == 200, again.text
        assert gw.metric("esam_encoder_circuit_state") == 0  # closed again, no restart


async def test_overload_against_a_hung_triton_is_refused_at_once(
    gateway_factory: GatewayFactory, own_triton: LocalTriton
) -> None:
    await warm_up(gateway_factory, own_triton)
    async with gateway_factory(
        encoder="triton",
        triton_url=own_triton.grpc_url,
        encode_timeout_s=DEADLINE_S,
        max_pending_encodes=4,
    ) as gw:
        freeze(own_triton, signal.SIGSTOP)

        async def upload(seed: int) -> tuple[int, float, str]:
            start = time.monotonic()
            response = await gw.client.post(
                "/embed", content=png_bytes(seed=seed), headers={"Content-Type": "image/png"}
            )
            code = response.json()["error"]["code"] if response.status_code != 200 else ""
            return response.status_code, time.monotonic() - start, code

        results = await asyncio.gather(*(upload(seed) for seed in range(100, 112)))
        refused = [r for r in results if r[0] == 429]
        assert len(refused) >= 8, results
        assert all(code == "overloaded" and took < 0.5 for _, took, code in refused), refused
        assert {status for status, _, _ in results} <= {429, 503}
        assert gw.state.embeddings.admission.pending == 0
        assert len(gw.state.embeddings.cache.l1) == 0  # nothing half-done was cached
