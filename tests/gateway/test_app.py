"""The app as a whole: OpenAPI page, CORS, health, metrics, request ids, the demo mode."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fastapi import FastAPI

from service.core.metrics import Metrics
from service.core.request_context import RequestIdFilter
from service.gateway.middleware import RequestContextMiddleware
from tests.gateway.fixtures import Gateway, GatewayFactory
from tests.support import assert_error, png_bytes


async def test_openapi_documents_every_route(gateway: Gateway) -> None:
    spec = (await gateway.client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert {
        "/embed",
        "/segment",
        "/segment/everything",
        "/embeddings/{image_id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/labelstudio/health",
        "/labelstudio/setup",
        "/labelstudio/predict",
        "/labelstudio/webhook",
        "/labelstudio/versions",
    } <= set(paths)
    assert {"head", "get", "delete"} <= set(paths["/embeddings/{image_id}"])
    embed_body = paths["/embed"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "multipart/form-data", "application/json"} <= set(embed_body)
    assert "application/x-npy" in paths["/embed"]["post"]["responses"]["200"]["content"]
    links = paths["/embed"]["post"]["responses"]["200"]["links"]
    operation_ids = {op["operationId"] for path in paths.values() for op in path.values()}
    assert {link["operationId"] for link in links.values()} <= operation_ids
    assert links["Segment"]["requestBody"]["image_id"] == "$response.body#/image_id"
    schemas = spec["components"]["schemas"]
    for name in ("SegmentByIdRequest", "SegmentWithImageRequest"):
        assert schemas[name]["examples"]
    for name in ("EverythingByIdRequest", "EverythingWithImageRequest"):
        assert schemas[name]["examples"]
    everything = paths["/segment/everything"]["post"]
    assert {"404", "422", "429"} <= set(everything["responses"])
    assert "stability" in everything["description"]
    assert schemas["EmbedResponse"]["examples"]
    docs = await gateway.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_health_and_readiness(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model": gateway.state.model_id,
        "encoder": "ok",
        "redis": "disabled",
        "decoder": "ok",
        "detail": None,
    }


async def test_metrics_are_exposed(gateway: Gateway) -> None:
    await gateway.client.post("/embed", content=png_bytes(), headers={"Content-Type": "image/png"})
    text = (await gateway.client.get("/metrics")).text
    for name in (
        "esam_request_duration_seconds_bucket",
        "esam_cache_lookups_total",
        "esam_encoder_images_total 1.0",
        "esam_encoder_duration_seconds",
        "esam_decoder_duration_seconds",
        "esam_singleflight_waits_total",
        "esam_redis_errors_total",
    ):
        assert name in text, name
    assert 'route="/embed",status="200"' in text
    model = gateway.state.model_id
    info = f'cache="memory",embedding_dtype="int8",encoder="local",model="{model}"'
    assert f"esam_model_info{{{info}}} 1.0" in text


async def test_request_id_is_echoed_when_safe(gateway: Gateway) -> None:
    given = await gateway.client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert given.headers["X-Request-Id"] == "abc-123"
    unsafe = await gateway.client.get("/healthz", headers={"X-Request-Id": "a b\tc"})
    assert unsafe.headers["X-Request-Id"] != "a b\tc"
    assert len(unsafe.headers["X-Request-Id"]) == 32


async def test_cors(gateway_factory: GatewayFactory) -> None:
    origin = "https://label.example.com"
    async with gateway_factory(cors_origins=[origin]) as gw:
        preflight = await gw.client.options(
            "/segment",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        other = await gw.client.get("/healthz", headers={"Origin": "https://evil.example.com"})
        assert "access-control-allow-origin" not in other.headers
    async with gateway_factory() as closed:
        response = await closed.client.get("/healthz", headers={"Origin": origin})
        assert "access-control-allow-origin" not in response.headers


async def test_random_weights_say_so_in_every_response(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory(checkpoint="random") as gw:
        body = (
            await gw.client.post(
                "/embed", content=png_bytes(), headers={"Content-Type": "image/png"}
            )
        ).json()
        assert "RANDOM-WEIGHTS" in body["model"]
        segment = await gw.client.post(
            "/segment",
            json={"image_id": body["image_id"], "prompts": [{"points": [[1, 1]], "labels": [1]}]},
        )
        assert "RANDOM-WEIGHTS" in segment.json()["model"]


async def test_invented_methods_share_one_metric_label(gateway: Gateway) -> None:
    for i in range(20):
        await gateway.client.request(f"BREW{i}", "/segment")
    text = (await gateway.client.get("/metrics")).text
    methods = {
        line.split('method="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("esam_request_duration_seconds_count")
    }
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert gateway.metric(
        "esam_request_duration_seconds_count",
        {"method": "other", "route": "/segment", "status": "405"},
    ) == pytest.approx(20)
    await gateway.client.get("/no/such/path/1")
    await gateway.client.get("/no/such/path/2")
    assert gateway.metric(
        "esam_request_duration_seconds_count",
        {"method": "GET", "route": "unmatched", "status": "404"},
    ) == pytest.approx(2)


async def test_an_unexpected_error_is_a_500_with_request_id_and_cors(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    origin = "https://label.example.com"

    def add_failing_route(app: FastAPI) -> None:
        async def boom() -> None:
            raise RuntimeError("forced failure")

        app.add_api_route("/boom", boom, methods=["GET"])

    caplog.handler.addFilter(RequestIdFilter())  # as the server's log handler has
    async with gateway_factory(configure=add_failing_route, cors_origins=[origin]) as gw:
        with caplog.at_level(logging.ERROR, logger="service.gateway"):
            response = await gw.client.get(
                "/boom", headers={"Origin": origin, "X-Request-Id": "trace-500"}
            )
    assert_error(response, 500, "internal_error")
    assert response.headers["X-Request-Id"] == "trace-500"
    assert response.headers["access-control-allow-origin"] == origin
    logged = [r for r in caplog.records if "unhandled error" in r.getMessage()]
    assert logged, caplog.records
    assert logged[0].request_id == "trace-500"  # type: ignore[attr-defined]
    assert "forced failure" in (logged[0].exc_text or "")


async def test_readiness_turns_503_once_shutdown_begins(gateway: Gateway) -> None:
    import signal

    import uvicorn

    from service.__main__ import DrainingServer

    assert (await gateway.client.get("/readyz")).status_code == 200
    server = DrainingServer(uvicorn.Config(gateway.app), gateway.app)
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn calls on SIGTERM
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert server.should_exit  # uvicorn's own shutdown still starts


async def test_the_demo_page_is_served_as_its_setting_says(
    gateway_factory: GatewayFactory,
) -> None:
    key = "ui-setting-key-0123456789"
    async with gateway_factory(api_keys=[key]) as gw:  # embedded: on by default
        page = await gw.client.get("/ui")
        assert page.status_code == 200  # the page's files need no key
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert '<input id="file" type="file"' in page.text
        script = await gw.client.get("/ui/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert (await gw.client.get("/ui/config.json")).json()["api_key_required"] is True
        assert (await gw.client.get("/ui/secrets.txt")).status_code == 404
        assert_error(await gw.client.post("/embed", content=png_bytes()), 401, "unauthorized")
    async with gateway_factory(ui=False) as gw:
        assert_error(await gw.client.get("/ui"), 404, "not_found")


async def test_a_request_cancelled_by_the_server_is_logged_with_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What uvicorn does to a handler still running when shutdown's grace period ends."""
    started = asyncio.Event()

    async def never_answers(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    app = RequestContextMiddleware(never_answers, metrics=Metrics(), max_body_bytes=1024)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/embed",
        "headers": [
            (b"x-request-id", b"stuck-request-1"),
        ],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING, logger="service.gateway"):
        handler = asyncio.create_task(app(scope, receive, send))
        await started.wait()
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
    [record] = [r for r in caplog.records if "cancelled" in r.getMessage()]
    assert record.getMessage().startswith("POST /embed cancelled after ")
    assert record.getMessage().endswith("(no answer sent)")
    assert getattr(record, "request_id", None) == "stuck-request-1"
