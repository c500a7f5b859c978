"""Tenants on one deployment, through HTTP: another tenant's image is an unknown one on
every by-id path and on every replica (a real Redis), a DELETE takes only the caller's
access, one upload is encoded once for both; per-tenant rate limits; bulk work held to
its share of the encode budget; the priority header; keys rotated through the keys file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway.fixtures import GatewayFactory
from tests.support import assert_error, png_bytes

ACME = "acme-key-0123456789abcdef"
GLOBEX = "globex-key-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX}"


def as_(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def upload(client: httpx.AsyncClient, key: str, image: bytes) -> dict[str, object]:
    response = await client.post(
        "/embed", content=image, headers=as_(key, **{"Content-Type": "image/png"})
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def by_id(client: httpx.AsyncClient, key: str, image_id: object) -> dict[str, int]:
    """The status of every by-id operation but DELETE for ``key``'s tenant."""
    prompt = {"points": [[10, 10]], "labels": [1]}
    segment = await client.post(
        "/segment", json={"image_id": image_id, "prompts": [prompt]}, headers=as_(key)
    )
    everything = await client.post(
        "/segment/everything",
        json={"image_id": image_id, "points_per_side": 2},
        headers=as_(key),
    )
    return {
        "head": (await client.head(f"/embeddings/{image_id}", headers=as_(key))).status_code,
        "get": (await client.get(f"/embeddings/{image_id}", headers=as_(key))).status_code,
        "segment": segment.status_code,
        "everything": everything.status_code,
    }


SEEN = {"head": 204, "get": 200, "segment": 200, "everything": 200}
UNSEEN = {"head": 404, "get": 404, "segment": 404, "everything": 404}


async def test_tenants_see_only_their_own_images_on_every_replica(
    gateway_factory: GatewayFactory, redis_url: str
) -> None:
    image = png_bytes(seed=71)
    settings = {"cache": "redis", "redis_url": redis_url, "api_keys": KEYS}
    async with gateway_factory(**settings) as first, gateway_factory(**settings) as second:
        for gw in (first, second):
            listener = gw.state.embeddings.cache.invalidations
            assert listener is not None
            await asyncio.wait_for(listener.subscribed.wait(), 5)
        image_id = (await upload(first.client, ACME, image))["image_id"]
        unknown = "f" * 64
        for gw in (first, second):
            assert await by_id(gw.client, ACME, image_id) == SEEN
            assert await by_id(gw.client, GLOBEX, image_id) == UNSEEN
            # answered exactly as an id nobody uploaded
            theirs = await gw.client.post(
                "/segment",
                json={"image_id": image_id, "prompts": [{"points": [[1, 1]], "labels": [1]}]},
                headers=as_(GLOBEX),
            )
            nobodys = await gw.client.post(
                "/segment",
                json={"image_id": unknown, "prompts": [{"points": [[1, 1]], "labels": [1]}]},
                headers=as_(GLOBEX),
            )
            assert_error(theirs, 404, "embedding_not_found")
            assert theirs.json() == {
                "error": {
                    "code": "embedding_not_found",
                    "message": nobodys.json()["error"]["message"].replace(unknown, str(image_id)),
                }
            }
        # another tenant's DELETE answers as for an unknown id and changes nothing
        assert (
            await second.client.delete(f"/embeddings/{image_id}", headers=as_(GLOBEX))
        ).status_code == 204
        for gw in (first, second):
            assert await by_id(gw.client, ACME, image_id) == SEEN

        # globex uploads the same image: its own access, no second encode
        assert (await upload(second.client, GLOBEX, image))["cached"] is True
        assert first.encodes + second.encodes == 1
        for gw in (first, second):
            assert await by_id(gw.client, GLOBEX, image_id) == SEEN

        # acme's DELETE takes acme's access on both replicas; globex keeps its own
        assert (
            await first.client.delete(f"/embeddings/{image_id}", headers=as_(ACME))
        ).status_code == 204
        for gw in (first, second):
            deadline = time.monotonic() + 5
            while (await by_id(gw.client, ACME, image_id))["head"] != 404:
                assert time.monotonic() < deadline, "acme still has the image"
                await asyncio.sleep(0.05)
            assert await by_id(gw.client, ACME, image_id) == UNSEEN
            assert await by_id(gw.client, GLOBEX, image_id) == SEEN


async def test_without_redis_tenants_are_apart_too(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(api_keys=KEYS) as gw:
        image_id = (await upload(gw.client, ACME, png_bytes(seed=72)))["image_id"]
        assert await by_id(gw.client, ACME, image_id) == SEEN
        assert await by_id(gw.client, GLOBEX, image_id) == UNSEEN


async def test_a_tenants_rate_limit_answers_429_for_it_alone(
    gateway_factory: GatewayFactory,
) -> None:
    limits = {"acme": {"rps": 0.01, "burst": 2}}  # two requests, then one per 100 s
    async with gateway_factory(api_keys=KEYS, tenant_limits=limits) as gw:
        head = "/embeddings/" + "0" * 64
        statuses = [(await gw.client.head(head, headers=as_(ACME))).status_code for _ in range(2)]
        assert statuses == [404, 404]
        refused = await gw.client.get(head, headers=as_(ACME))
        assert_error(refused, 429, "tenant_limit")
        assert "acme" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        for _ in range(5):  # globex has no limit of its own
            assert (await gw.client.head(head, headers=as_(GLOBEX))).status_code == 404
        refused_total = gw.metric("esam_tenant_refused_total", {"tenant": "acme", "limit": "rate"})
        assert refused_total == 1
        assert (
            gw.metric("esam_tenant_requests_total", {"tenant": "globex", "priority": "interactive"})
            == 5
        )


@pytest.mark.real_encoder  # the encodes must overlap
async def test_bulk_work_cannot_take_the_interactive_share(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(
        max_pending_encodes=4, interactive_share=0.5, encoder_max_batch=1
    ) as gw:
        bulk_images = [png_bytes(seed=s) for s in range(80, 86)]
        bulk = [
            gw.client.post(
                "/embed",
                content=image,
                headers={"Content-Type": "image/png", "X-Priority": "bulk"},
            )
            for image in bulk_images
        ]
        annotator = gw.client.post(
            "/embed", content=png_bytes(seed=90), headers={"Content-Type": "image/png"}
        )
        *bulk_responses, interactive = await asyncio.gather(*bulk, annotator)
        statuses = sorted(r.status_code for r in bulk_responses)
        assert statuses == [200, 200, 429, 429, 429, 429]  # half of the 4 slots
        refused = next(r for r in bulk_responses if r.status_code == 429)
        assert_error(refused, 429, "overloaded")
        assert "ESAM_INTERACTIVE_SHARE" in refused.json()["error"]["message"]
        assert interactive.status_code == 200, interactive.text
        assert gw.state.embeddings.admission.pending == 0


async def test_an_unknown_priority_is_refused_before_anything_runs(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory() as gw:
        response = await gw.client.post(
            "/embed",
            content=png_bytes(seed=91),
            headers={"Content-Type": "image/png", "X-Priority": "urgent"},
        )
        assert_error(response, 422, "invalid_request")
        assert "X-Priority" in response.json()["error"]["message"]
        assert gw.encodes == 0
        document = (await gw.client.get("/openapi.json")).json()
        for path in ("/embed", "/segment", "/segment/everything", "/edges"):
            names = [p["name"] for p in document["paths"][path]["post"].get("parameters", [])]
            assert "X-Priority" in names, path
        assert (
            "tenant"
            in document["paths"]["/embeddings/{image_id}"]["head"]["responses"]["404"][
                "description"
            ]
        )


async def test_keys_rotate_through_the_keys_file_without_a_restart(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# tenants\nacme:{ACME}\n")
    head = "/embeddings/" + "0" * 64
    async with gateway_factory(api_keys_file=str(keys)) as gw:
        assert (await gw.client.head(head, headers=as_(ACME))).status_code == 404
        assert (await gw.client.head(head, headers=as_(GLOBEX))).status_code == 401
        # a Secret's update: a new file put in place of the old one
        new = tmp_path / "keys.new"
        new.write_text(f"globex:{GLOBEX}\n")
        new.replace(keys)
        deadline = time.monotonic() + 10
        while (await gw.client.head(head, headers=as_(GLOBEX))).status_code != 404:
            assert time.monotonic() < deadline, "the new key was not picked up"
            await asyncio.sleep(0.2)
        assert (await gw.client.head(head, headers=as_(ACME))).status_code == 401
        # a broken version keeps the last good keys
        keys.write_text("Not A Tenant:short\n")
        await asyncio.sleep(1.5)
        assert (await gw.client.head(head, headers=as_(GLOBEX))).status_code == 404


@pytest.mark.real_encoder  # the encodes must overlap
async def test_a_tenants_pending_encodes_stop_at_its_limit(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(
        api_keys=KEYS, tenant_limits={"acme": {"pending_encodes": 1}}, encoder_max_batch=1
    ) as gw:
        acme = [
            gw.client.post(
                "/embed",
                content=png_bytes(seed=s),
                headers=as_(ACME, **{"Content-Type": "image/png"}),
            )
            for s in (95, 96, 97)
        ]
        globex = gw.client.post(
            "/embed",
            content=png_bytes(seed=98),
            headers=as_(GLOBEX, **{"Content-Type": "image/png"}),
        )
        *mine, theirs = await asyncio.gather(*acme, globex)
        assert sorted(r.status_code for r in mine) == [200, 429, 429]
        refused = next(r for r in mine if r.status_code == 429)
        assert_error(refused, 429, "tenant_limit")
        assert "ESAM_TENANT_PENDING_ENCODES" in refused.json()["error"]["message"]
        assert theirs.status_code == 200  # another tenant is not held back
        refusals = gw.metric(
            "esam_tenant_refused_total", {"tenant": "acme", "limit": "pending_encodes"}
        )
        assert refusals == 2
