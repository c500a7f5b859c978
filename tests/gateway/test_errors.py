"""Bad input gets its status and stable code, and leaves nothing in any cache tier."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import pytest
import redis

from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.support import assert_error, png_bytes

API_KEY = "k" * 24


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def redis_keys(url: str, prefix: str) -> list[bytes]:
    return list(redis.Redis.from_url(url).scan_iter(f"{prefix}:*"))


def point(x: float, y: float, label: int = 1) -> dict[str, Any]:
    return {"points": [[x, y]], "labels": [label]}


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    (
        "random bytes",
        {"content": b"\x01\x02garbage" * 50, "headers": {"Content-Type": "image/png"}},
        422,
        "invalid_image",
    ),
    (
        "truncated png",
        {"content": png_bytes()[:200], "headers": {"Content-Type": "image/png"}},
        422,
        "invalid_image",
    ),
    (
        "text/plain",
        {"content": png_bytes(), "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    ("no content type", {"content": png_bytes()}, 415, "unsupported_media_type"),
    ("bad base64", {"json": {"image": "not*base64!"}}, 422, "invalid_image"),
    ("json not an object", {"json": ["image"]}, 422, "invalid_request"),
    (
        "malformed json",
        {"content": b'{"image": ', "headers": {"Content-Type": "application/json"}},
        422,
        "invalid_request",
    ),
    (
        "multipart without image",
        {"files": {"other": ("x.png", png_bytes(), "image/png")}},
        422,
        "invalid_request",
    ),
    (
        "empty body",
        {"content": b"", "headers": {"Content-Type": "image/png"}},
        422,
        "invalid_image",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_embed_requests(
    gateway_factory: GatewayFactory,
    redis_url: str,
    name: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    async with gateway_factory(cache="redis", redis_url=redis_url) as gw:
        response = await gw.client.post("/embed", **kwargs)
        assert_error(response, status, code)
        assert len(gw.state.embeddings.cache.l1) == 0
        assert redis_keys(redis_url, gw.state.settings.redis_key_prefix) == []
        assert gw.encodes == 0


SEGMENT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("point outside", {"prompts": [point(64.5, 10)]}, "invalid_prompt"),
    ("negative", {"prompts": [point(-1, 10)]}, "invalid_prompt"),
    ("huge", {"prompts": [point(1e300, 10)]}, "invalid_prompt"),
    ("nan", {"prompts": [point(float("nan"), 10)]}, "invalid_prompt"),
    (
        "too many points",
        {"prompts": [{"points": [[1, 1]] * 7, "labels": [1] * 7}]},
        "invalid_prompt",
    ),
    ("bad label", {"prompts": [point(1, 1, label=3)]}, "invalid_prompt"),
    ("label not int", {"prompts": [{"points": [[1, 1]], "labels": ["1"]}]}, "invalid_prompt"),
    ("inverted box", {"prompts": [{"box": [30, 20, 10, 40]}]}, "invalid_prompt"),
    ("empty prompt", {"prompts": [{}]}, "invalid_prompt"),
    ("no prompts", {"prompts": []}, "invalid_prompt"),
    ("unknown field", {"prompts": [point(1, 1)], "colour": "red"}, "invalid_request"),
    ("bad mask format", {"prompts": [point(1, 1)], "mask_format": "svg"}, "invalid_request"),
]


@pytest.mark.parametrize(
    ("name", "extra", "code"), SEGMENT_CASES, ids=[c[0] for c in SEGMENT_CASES]
)
async def test_bad_prompts_with_a_new_image_encode_nothing(
    gateway_factory: GatewayFactory, redis_url: str, name: str, extra: dict[str, Any], code: str
) -> None:
    async with gateway_factory(cache="redis", redis_url=redis_url) as gw:
        body = {"image": b64(png_bytes()), **extra}
        content = _json_allowing_nan(body)
        response = await gw.client.post(
            "/segment", content=content, headers={"Content-Type": "application/json"}
        )
        assert_error(response, 422, code)
        assert gw.encodes == 0
        assert len(gw.state.embeddings.cache.l1) == 0
        assert redis_keys(redis_url, gw.state.settings.redis_key_prefix) == []


def _json_allowing_nan(body: dict[str, Any]) -> bytes:
    import json

    return json.dumps(body).encode()  # NaN is written as the NaN literal Python accepts


async def test_unknown_image_id_and_both_or_neither_image(gateway: Gateway) -> None:
    unknown = await gateway.client.post(
        "/segment", json={"image_id": "0" * 64, "prompts": [point(1, 1)]}
    )
    assert_error(unknown, 404, "embedding_not_found")
    malformed = await gateway.client.post(
        "/segment", json={"image_id": "XYZ", "prompts": [point(1, 1)]}
    )
    assert_error(malformed, 422, "invalid_request")
    both = await gateway.client.post(
        "/segment", json={"image_id": "0" * 64, "image": b64(png_bytes()), "prompts": [point(1, 1)]}
    )
    assert_error(both, 422, "invalid_request")
    neither = await gateway.client.post("/segment", json={"prompts": [point(1, 1)]})
    assert_error(neither, 422, "invalid_request")
    bad_path = await gateway.client.get("/embeddings/not-a-hash")
    assert_error(bad_path, 422, "invalid_request")


async def test_too_large(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(max_image_bytes=4096, max_image_pixels=1000) as gw:
        big = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
        by_length = await gw.client.post(
            "/embed", content=big * 20, headers={"Content-Type": "image/png"}
        )
        assert_error(by_length, 413, "image_too_large")
        over_image_limit = await gw.client.post(
            "/embed", content=big[:5000], headers={"Content-Type": "image/png"}
        )
        assert_error(over_image_limit, 413, "image_too_large")
        many_pixels = await gw.client.post(
            "/embed", content=png_bytes(64, 48), headers={"Content-Type": "image/png"}
        )
        assert_error(many_pixels, 413, "image_too_large")
        assert gw.encodes == 0


async def test_streamed_oversized_body_is_cut_off(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(max_image_bytes=4096) as gw:
        limit = 4096 * 4 // 3 + (1 << 20)
        sent = 0

        async def chunks() -> Any:  # no Content-Length: the limit applies while streaming
            nonlocal sent
            for _ in range(100):
                sent += 65536
                yield b"\0" * 65536

        response = await gw.client.post(
            "/embed", content=chunks(), headers={"Content-Type": "image/png"}
        )
        assert_error(response, 413, "image_too_large")
        assert sent <= limit + 65536 * 2


async def test_api_keys(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(api_keys=[API_KEY, "second-key-0123456789"]) as gw:
        missing = await gw.client.post(
            "/embed", content=png_bytes(), headers={"Content-Type": "image/png"}
        )
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = await gw.client.post(
            "/embed",
            content=png_bytes(),
            headers={"Content-Type": "image/png", "Authorization": "Bearer nope"},
        )
        assert_error(wrong, 401, "unauthorized")
        head = await gw.client.head("/embeddings/" + "0" * 64)
        assert head.status_code == 401
        for path in ("/docs", "/openapi.json"):
            assert_error(await gw.client.get(path), 401, "unauthorized")
        keyed = await gw.client.get("/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"})
        assert keyed.status_code == 200
        assert "/segment" in keyed.json()["paths"]
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await gw.client.get(path)).status_code == 200
        assert gw.encodes == 0
        ok = await gw.client.post(
            "/embed",
            content=png_bytes(),
            headers={"Content-Type": "image/png", "Authorization": "Bearer second-key-0123456789"},
        )
        assert ok.status_code == 200


@pytest.mark.real_encoder  # the encodes must overlap
async def test_pending_encode_budget_answers_429(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(max_pending_encodes=2, encoder_max_batch=1) as gw:
        images = [png_bytes(seed=s) for s in range(6)]
        responses = await asyncio.gather(
            *(
                gw.client.post("/embed", content=i, headers={"Content-Type": "image/png"})
                for i in images
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert 429 in statuses, statuses
        assert 200 in statuses, statuses
        assert statuses.count(200) == 2  # the budget, not one more
        refused = next(r for r in responses if r.status_code == 429)
        assert_error(refused, 429, "overloaded")
        assert int(refused.headers["Retry-After"]) >= 1
        assert len(gw.state.embeddings.cache.l1) == statuses.count(200)
        assert gw.metric("esam_encodes_refused_total") == 4
        assert gw.state.embeddings.admission.pending == 0  # every slot came back


async def test_unreachable_triton_is_503_fast(gateway_factory: GatewayFactory) -> None:
    from tests.services import free_port

    async with gateway_factory(
        encoder="triton", triton_url=f"grpc://127.0.0.1:{free_port()}"
    ) as gw:
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 200  # prompts on cached images need no encoder
        assert ready.json()["encoder"] == "unavailable"
        loop = asyncio.get_running_loop()
        for _ in range(4):
            start = loop.time()
            response = await gw.client.post(
                "/embed", content=png_bytes(), headers={"Content-Type": "image/png"}
            )
            assert_error(response, 503, "encoder_unavailable")
            assert int(response.headers["Retry-After"]) >= 1
            assert loop.time() - start < 5
        assert len(gw.state.embeddings.cache.l1) == 0


async def test_unknown_route_and_method(gateway: Gateway) -> None:
    assert_error(await gateway.client.get("/nope"), 404, "not_found")
    assert_error(await gateway.client.get("/embed"), 405, "method_not_allowed")


async def test_deeply_nested_json(gateway: Gateway) -> None:
    nested = b'{"prompts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = await gateway.client.post(
        "/segment", content=nested, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_request")  # unparseable, not a bad prompt
