"""Bulk work reaches Triton at the lower priority: a request's ``X-Priority`` is the
priority of its encode in every model of the ensemble, as Triton's own (verbose) log
records each request it prepares."""

from __future__ import annotations

import re
import time

from devtools.triton import LocalTriton
from devtools.triton_config import MODEL, PREPROCESS
from tests.gateway.fixtures import GatewayFactory
from tests.support import png_bytes

PREPARED = re.compile(rb"prepared: .*model: (\w+),.* priority: (\d+)")


def priorities(triton: LocalTriton, offset: int) -> dict[str, set[int]]:
    """Model name -> the priorities of the requests Triton prepared past ``offset``."""
    assert triton.log_path is not None
    with triton.log_path.open("rb") as log:
        log.seek(offset)
        found: dict[str, set[int]] = {}
        for line in log.read().splitlines():
            match = PREPARED.search(line)
            if match:
                found.setdefault(match[1].decode(), set()).add(int(match[2]))
    return found


async def test_bulk_encodes_reach_every_model_at_priority_two(
    gateway_factory: GatewayFactory, triton: LocalTriton
) -> None:
    assert triton.log_path is not None
    async with gateway_factory(encoder="triton", triton_url=triton.grpc_url) as gw:
        for priority, level, seed in (("bulk", 2, 801), ("interactive", 1, 802)):
            offset = triton.log_path.stat().st_size
            response = await gw.client.post(
                "/embed",
                content=png_bytes(seed=seed),
                headers={"Content-Type": "image/png", "X-Priority": priority},
            )
            assert response.status_code == 200, response.text
            deadline = time.monotonic() + 10
            while MODEL not in (seen := priorities(triton, offset)):
                assert time.monotonic() < deadline, seen
                time.sleep(0.1)
            assert seen[PREPROCESS] == {level}, seen
            assert seen[MODEL] == {level}, seen
