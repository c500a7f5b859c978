"""Rendezvous routing of an image's calls over the Triton endpoints (no server needed:
the endpoints' clients connect lazily, and no call is made)."""

from __future__ import annotations

from collections import Counter

from service.core.encoders.triton import LOAD_GUARD_CALLS, TritonEncoder
from service.core.metrics import Metrics

KEYS = [f"{i:064x}" for i in range(600)]


async def pool(addresses: list[str]) -> TritonEncoder:
    encoder = TritonEncoder(
        ",".join(f"grpc://{a}" for a in addresses),
        model_name="efficientsam",
        timeout_s=1,
        metrics=Metrics(),
    )
    await encoder.start()
    return encoder


def route(encoder: TritonEncoder, key: str) -> str:
    picked = encoder.pick_for(key, avoid=set())
    assert picked is not None
    endpoint, call = picked
    call.abandon()
    return endpoint.address


async def test_each_image_has_one_endpoint_and_a_lost_one_moves_only_its_share() -> None:
    addresses = [f"127.0.0.1:{9000 + i}" for i in range(4)]
    encoder = await pool(addresses)
    try:
        first = {key: route(encoder, key) for key in KEYS}
        assert first == {key: route(encoder, key) for key in KEYS}  # stable
        spread = Counter(first.values())
        assert set(spread) == set(addresses)
        assert min(spread.values()) > len(KEYS) / 4 * 0.7  # roughly even
        gone = addresses[1]
        await encoder.endpoints.pop(gone).close()
        after = {key: route(encoder, key) for key in KEYS}
        moved = {key for key in KEYS if after[key] != first[key]}
        assert moved == {key for key in KEYS if first[key] == gone}  # only the lost share
    finally:
        await encoder.close()


async def test_far_busier_or_open_endpoints_are_passed_over() -> None:
    addresses = [f"127.0.0.1:{9100 + i}" for i in range(3)]
    encoder = await pool(addresses)
    try:
        key = KEYS[0]
        home = route(encoder, key)
        endpoint = encoder.endpoints[home]
        endpoint.outstanding = LOAD_GUARD_CALLS - 1  # busier, not far busier: kept
        assert route(encoder, key) == home
        endpoint.outstanding = LOAD_GUARD_CALLS + 1  # far busier than the idle others
        assert route(encoder, key) != home
        endpoint.outstanding = 0
        for _ in range(endpoint.breaker.threshold):  # its circuit opens
            call = endpoint.breaker.acquire()
            assert call is not None
            call.failure()
        assert route(encoder, key) != home
        # the next in hash order is the same for every call of this image
        assert len({route(encoder, key) for _ in range(10)}) == 1
        # the one it avoids (a failed attempt) is skipped too
        other = route(encoder, key)
        picked = encoder.pick_for(key, avoid={other})
        assert picked is not None
        assert picked[0].address not in (home, other)
        picked[1].abandon()
    finally:
        await encoder.close()
