"""The OpenAPI document says exactly what the server accepts: examples, limits, methods."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from service.gateway.examples import EXAMPLE_IMAGE_BASE64, EXAMPLE_IMAGE_ID
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.support import assert_error, png_bytes

KEY = "example-key-0123456789"
#: the examples build on each other: upload first, then use the id, then delete it
OPERATION_ORDER = ["post", "head", "get", "delete"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = document["components"]["schemas"][name]
    return schema


def _schema_examples(document: dict[str, Any], schema: dict[str, Any]) -> Iterator[Any]:
    schema = _resolve(document, schema)
    yield from schema.get("examples", [])
    for variant in schema.get("oneOf", []) + schema.get("anyOf", []):
        yield from _schema_examples(document, variant)


def _body_examples(
    document: dict[str, Any], operation: dict[str, Any]
) -> Iterator[tuple[str, Any]]:
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        if "example" in content:
            yield media_type, content["example"]
        for example in content.get("examples", {}).values():
            yield media_type, example["value"]
        for example in _schema_examples(document, content.get("schema", {})):
            yield media_type, example


async def keyed_document(gw: Gateway) -> dict[str, Any]:
    """The served document of a gateway whose API key is ``KEY``."""
    response = await gw.client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _success_status(operation: dict[str, Any]) -> int:
    (status,) = [int(code) for code in operation["responses"] if code.startswith("2")]
    return status


@pytest.mark.slow
async def test_every_example_in_the_document_is_accepted(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(api_keys=[KEY]) as gw:
        headers = {"Authorization": f"Bearer {KEY}"}
        document = await keyed_document(gw)
        requests: list[tuple[str, str, dict[str, Any], int]] = []
        for path, operations in document["paths"].items():
            for method in sorted(operations, key=OPERATION_ORDER.index):
                operation = operations[method]
                status = _success_status(operation)
                url = path
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "path":
                        examples = [e["value"] for e in parameter.get("examples", {}).values()]
                        assert examples, f"{method} {path}: {parameter['name']} has no example"
                        value = examples[0]
                        url = url.replace("{" + parameter["name"] + "}", str(value))
                bodies = list(_body_examples(document, operation))
                if "requestBody" in operation:
                    assert bodies, f"{method.upper()} {path} has no example body"
                for media_type, body in bodies:
                    requests.append((method, url, {"json": body, "media_type": media_type}, status))
                if not bodies:
                    requests.append((method, url, {}, status))
        # /embed first: the other examples name the example image by its id
        requests.sort(key=lambda r: (r[1] != "/embed", r[0] == "delete"))
        assert len(requests) >= 10
        for method, url, body, status in requests:
            kwargs: dict[str, Any] = {}
            if body:
                assert body["media_type"] == "application/json"
                kwargs["json"] = body["json"]
            response = await gw.client.request(method.upper(), url, headers=headers, **kwargs)
            assert response.status_code == status, (method, url, body, response.text)


async def test_the_example_image_is_what_its_id_says(gateway: Gateway) -> None:
    data = base64.b64decode(EXAMPLE_IMAGE_BASE64)
    assert hashlib.sha256(data).hexdigest() == EXAMPLE_IMAGE_ID
    response = await gateway.client.post(
        "/embed", content=data, headers={"Content-Type": "image/png"}
    )
    assert response.json()["image_id"] == EXAMPLE_IMAGE_ID
    assert (response.json()["width"], response.json()["height"]) == (64, 48)


async def test_the_document_states_this_deployments_limits(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(
        max_prompts=5, max_image_bytes=3000, max_everything_prompts=21, api_keys=[KEY]
    ) as gw:
        document = await keyed_document(gw)
    schemas = document["components"]["schemas"]
    for name in ("SegmentByIdRequest", "SegmentWithImageRequest"):
        assert schemas[name]["properties"]["prompts"]["maxItems"] == 5
    for name in ("SegmentWithImageRequest", "EverythingWithImageRequest"):
        assert schemas[name]["properties"]["image"]["maxLength"] == 4000  # 3000 bytes in base64
    embed_json = document["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    assert embed_json["schema"]["properties"]["image"]["maxLength"] == 4000
    # 21 prompts: a 4×4 grid alone, 2×2 on the image and its 4 crops, 1 point on 1 + 4 + 16
    everything = schemas["EverythingWithImageRequest"]
    assert everything["properties"]["points_per_side"]["maximum"] == 4
    assert everything["properties"]["points_per_side"]["default"] == 4
    assert everything["properties"]["crop_n_layers"]["maximum"] == 2
    assert everything["if"]["properties"]["crop_n_layers"]["const"] == 1
    assert everything["then"]["properties"]["points_per_side"]["maximum"] == 2
    assert everything["else"]["if"]["properties"]["crop_n_layers"]["const"] == 2
    assert everything["else"]["then"]["properties"]["points_per_side"]["maximum"] == 1
    assert "crop_n_layers" not in schemas["EverythingByIdRequest"]["properties"]
    # the key: every operation but the probes and the metrics
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["paths"]["/segment"]["post"]["security"] == [{"apiKey": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []


@pytest.mark.slow
async def test_a_grid_left_out_is_the_densest_the_deployment_allows(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(max_everything_prompts=21) as gw:
        image = base64.b64encode(png_bytes()).decode()
        body = {"image": image, "crop_n_layers": 1, "stability_score_thresh": 0}
        body |= {"pred_iou_thresh": -1, "box_nms_thresh": 1.0, "mask_format": "none"}
        response = await gw.client.post("/segment/everything", json=body)
        assert response.status_code == 200, response.text
        # 2×2 points on the image and on each of its 4 crops (5 × 4 = 20 ≤ 21)
        points = {tuple(m["point"]) for m in response.json()["masks"]}
        assert 0 < len(points) <= 20
        too_dense = await gw.client.post("/segment/everything", json=body | {"points_per_side": 3})
        assert_error(too_dense, 422, "invalid_request")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"image_id": None, "prompts": [{"points": [[1, 1]], "labels": [1]}]}, "image_id"),
        ({"image": "", "prompts": [{"points": [[1, 1]], "labels": [1]}]}, "image"),
        ({"image_id": "0" * 64, "prompts": [{"points": [[1, 1]], "labels": [True]}]}, "labels"),
        ({"image_id": "0" * 64, "prompts": [{"points": [["1", 1]], "labels": [1]}]}, "points"),
        ({"image_id": "0" * 64, "prompts": [{"points": [[1, 1]], "box": None}]}, "box"),
        ({"image_id": "0" * 64, "prompts": [{"labels": []}]}, "prompts"),
        ({"image_id": "0" * 64, "prompts": [{"points": [[1]], "labels": [1]}]}, "points"),
        ({"image_id": "0" * 64, "prompts": [{"points": [[-1, 1]], "labels": [1]}]}, "points"),
        ({"image_id": "0" * 64, "prompts": [], "multimask": 1}, "multimask"),
    ],
)
async def test_what_the_schema_forbids_is_refused(
    gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    response = await gateway.client.post("/segment", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]


async def test_integral_numbers_are_integers(gateway: Gateway) -> None:
    """JSON Schema's integer includes 2.0, so the server takes it (strings it does not)."""
    body = {"image": base64.b64encode(png_bytes()).decode(), "mask_format": "none"}
    ok = await gateway.client.post("/segment/everything", json=body | {"points_per_side": 2.0})
    assert ok.status_code == 200, ok.text
    bad = await gateway.client.post("/segment/everything", json=body | {"points_per_side": "2"})
    assert_error(bad, 422, "invalid_request")
    half = await gateway.client.post("/segment/everything", json=body | {"points_per_side": 2.5})
    assert_error(half, 422, "invalid_request")


async def test_exactly_one_image_is_one_clear_message(gateway: Gateway) -> None:
    prompts = [{"points": [[1, 1]], "labels": [1]}]
    both = {"image_id": "0" * 64, "image": base64.b64encode(png_bytes()).decode()}
    for body in (both, {}):
        for path in ("/segment", "/segment/everything"):
            response = await gateway.client.post(path, json=body | {"prompts": prompts})
            assert_error(response, 422, "invalid_request")
            assert response.json()["error"]["message"] == (
                "body: send exactly one of image_id and image"
            )
    crops_by_id = await gateway.client.post(
        "/segment/everything", json={"image_id": "0" * 64, "crop_n_layers": 1}
    )
    assert_error(crops_by_id, 422, "invalid_request")
    assert "crop_n_layers" in crops_by_id.json()["error"]["message"]


@pytest.mark.parametrize(
    ("media_type", "status"),
    [
        ("image/png", 200),
        ("image/jpeg", 200),  # the bytes decide the format
        ("application/octet-stream", 200),
        ("image/gif", 415),
        ("image/svg+xml", 415),
        ("text/plain", 415),
    ],
)
async def test_raw_bodies_take_the_documented_media_types(
    gateway: Gateway, media_type: str, status: int
) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    documented = document["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert (media_type in documented) == (status == 200)
    response = await gateway.client.post(
        "/embed", content=png_bytes(), headers={"Content-Type": media_type}
    )
    assert response.status_code == status, response.text


async def test_multipart_takes_one_image_field_only(gateway: Gateway) -> None:
    files = {"image": ("a.png", png_bytes(), "image/png")}
    assert (await gateway.client.post("/embed", files=files)).status_code == 200
    extra = await gateway.client.post("/embed", files=files, data={"note": "x"})
    assert_error(extra, 422, "invalid_request")


async def test_a_405_lists_every_method_of_the_path(gateway: Gateway) -> None:
    response = await gateway.client.options(f"/embeddings/{'0' * 64}")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "DELETE, GET, HEAD"
    on_embed = await gateway.client.get("/embed")
    assert on_embed.headers["Allow"] == "POST"


async def test_label_studio_routes_take_the_key_as_basic_password_too(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(api_keys=[KEY]) as gw:
        document = await keyed_document(gw)
    schemes = document["components"]["securitySchemes"]
    assert {(s["type"], s["scheme"]) for s in schemes.values()} == {
        ("http", "bearer"),
        ("http", "basic"),
    }
    for path, operations in document["paths"].items():
        for operation in operations.values():
            used = {name for option in operation["security"] for name in option}
            if path.startswith("/labelstudio/"):
                assert {schemes[n]["scheme"] for n in used} == {"bearer", "basic"}, path
            elif path not in ("/healthz", "/readyz", "/metrics"):
                assert {schemes[n]["scheme"] for n in used} == {"bearer"}, path
