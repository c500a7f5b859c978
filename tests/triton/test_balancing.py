"""Several Triton servers behind one gateway: balanced per request, surviving the loss of one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.triton import LocalTriton
from devtools.triton_config import ENSEMBLE
from service.core.circuit import BreakerState
from service.core.encoders.triton import TritonEncoder
from service.core.encoders.triton_targets import parse_targets
from service.core.metrics import Metrics
from tests.conftest import Fixture
from tests.gateway.fixtures import GatewayFactory
from tests.support import png_bytes
from tests.triton.fixtures import start_triton

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`


def test_targets_are_parsed() -> None:
    targets = parse_targets("grpc://10.0.0.1:8001, grpc://triton-headless:8001,[::1]:8001")
    assert [(t.protocol, t.host, t.port, t.is_address) for t in targets] == [
        ("grpc", "10.0.0.1", 8001, True),
        ("grpc", "triton-headless", 8001, False),
        ("grpc", "::1", 8001, True),
    ]
    for bad in ("", "grpc://a", "ftp://a:1", "grpc://a:1,http://b:2"):
        with pytest.raises(ValueError):  # noqa: PT011 - each names its own problem
            parse_targets(bad)


async def test_a_name_is_resolved_to_all_its_addresses() -> None:
    encoder = TritonEncoder(
        "grpc://localhost:8001", model_name=ENSEMBLE, timeout_s=1, metrics=Metrics()
    )
    await encoder.start()
    try:
        assert "127.0.0.1:8001" in encoder.endpoints
    finally:
        await encoder.close()


async def test_picks_the_least_busy_open_endpoint() -> None:
    metrics = Metrics()
    encoder = TritonEncoder(
        "grpc://127.0.0.1:1,grpc://127.0.0.1:2", model_name=ENSEMBLE, timeout_s=1, metrics=metrics
    )
    await encoder.start()
    try:
        first, second = encoder.endpoints["127.0.0.1:1"], encoder.endpoints["127.0.0.1:2"]
        first.outstanding = 3
        picked = encoder._pick(avoid=set())
        assert picked is not None
        assert picked[0] is second
        picked[1].abandon()
        seen = set()
        first.outstanding = 0
        for _ in range(4):  # equal load: in turn
            picked = encoder._pick(avoid=set())
            assert picked is not None
            seen.add(picked[0].address)
            picked[1].abandon()
        assert seen == {"127.0.0.1:1", "127.0.0.1:2"}
        for _ in range(3):  # open the second one's circuit
            call = second.breaker.acquire()
            assert call is not None
            call.failure()
        assert second.breaker.state is BreakerState.OPEN
        for _ in range(3):
            picked = encoder._pick(avoid=set())
            assert picked is not None
            assert picked[0] is first
            picked[1].abandon()
        assert metrics.registry.get_sample_value("esam_triton_endpoints", {"state": "open"}) == 1
        assert metrics.registry.get_sample_value("esam_encoder_circuit_state") == 0
    finally:
        await encoder.close()


@pytest.fixture
def two_tritons(fixture: Fixture, tmp_path: Path) -> Iterator[tuple[LocalTriton, LocalTriton]]:
    servers = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            servers.append(start_triton(tmp_path / name, fixture.checkpoint))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


async def test_two_tritons_share_the_load_and_survive_the_loss_of_one(
    gateway_factory: GatewayFactory, two_tritons: tuple[LocalTriton, LocalTriton]
) -> None:
    a, b = two_tritons
    urls = f"{a.grpc_url},{b.grpc_url}"
    async with gateway_factory(
        encoder="triton", triton_url=urls, encode_timeout_s=120, max_pending_encodes=64
    ) as gw:

        async def upload(seed: int) -> int:
            response = await gw.client.post(
                "/embed", content=png_bytes(seed=seed), headers={"Content-Type": "image/png"}
            )
            return response.status_code

        statuses = await asyncio.gather(*(upload(1000 + i) for i in range(16)))
        assert statuses == [200] * 16
        served = [s.counter("nv_inference_request_success", ENSEMBLE) for s in (a, b)]
        assert sum(served) == 16
        assert min(served) >= 4, served  # each gets at least a quarter

        a.stop()  # one Triton gone: its requests go to the other, none fails
        statuses = await asyncio.gather(*(upload(2000 + i) for i in range(8)))
        assert statuses == [200] * 8
        assert b.counter("nv_inference_request_success", ENSEMBLE) == served[1] + 8
        assert gw.metric("esam_triton_endpoints", {"state": "closed"}) >= 1
