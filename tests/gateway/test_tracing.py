"""OpenTelemetry: the span tree of /embed (miss, hit) and /segment; the console exporter
and JSON logs of a real process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devtools.gateway_process import GatewayProcess
from service.core.tracing import trace_headers, tracer
from tests.conftest import Fixture
from tests.gateway.fixtures import GatewayFactory

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once per process), recording in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        RedisInstrumentor().uninstrument()
        provider.shutdown()  # later tests record nothing


def by_name(found: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in found if s.name == name]


def in_trace(found: tuple[ReadableSpan, ...], root: ReadableSpan) -> tuple[ReadableSpan, ...]:
    return tuple(s for s in found if s.context.trace_id == root.context.trace_id)


def parent_of(span: ReadableSpan, found: tuple[ReadableSpan, ...]) -> ReadableSpan:
    assert span.parent is not None, span.name
    return next(s for s in found if s.context.span_id == span.parent.span_id)


def under(span: ReadableSpan, root: ReadableSpan, found: tuple[ReadableSpan, ...]) -> bool:
    while span.parent is not None:
        span = parent_of(span, found)
        if span is root:
            return True
    return False


@pytest.mark.real_encoder  # the local encoder's own span attributes
async def test_span_trees_of_embed_miss_hit_and_segment(
    spans: InMemorySpanExporter,
    gateway_factory: GatewayFactory,
    redis_url: str,
    image_bytes: bytes,
) -> None:
    async with gateway_factory(
        cache="redis", redis_url=redis_url, otel_traces_exporter="console"
    ) as gw:
        spans.clear()
        miss = await gw.client.post("/embed", content=image_bytes, headers=JPEG)
        assert miss.status_code == 200
        (root,) = by_name(spans.get_finished_spans(), "POST /embed")
        # the request's trace (background Redis work, e.g. the invalidation listener, has its own)
        found = in_trace(spans.get_finished_spans(), root)
        lookups = by_name(found, "esam.cache.lookup")
        assert [(s.attributes or {}).get("esam.cache.tier") for s in lookups][:2] == ["l1", "redis"]
        assert all((s.attributes or {})["esam.cache.outcome"] == "miss" for s in lookups)
        (encode,) = by_name(found, "esam.encode")
        assert (encode.attributes or {})["esam.encoder"] == "local"
        assert {"esam.image_decode_ms", "esam.batch_ms"} <= set(encode.attributes or {})
        assert parent_of(encode, found) is root
        (store,) = by_name(found, "esam.cache.store")
        assert (store.attributes or {})["esam.cache.tier"] == "l1+redis"
        # the Redis client's own spans sit under ours
        redis_lookup = next(
            s for s in lookups if (s.attributes or {})["esam.cache.tier"] == "redis"
        )
        assert any(parent_of(s, found) is redis_lookup for s in found if s.parent is not None)
        assert any(
            s.parent is not None and parent_of(s, found) is store and "SET" in s.name for s in found
        )

        spans.clear()
        hit = await gw.client.post("/embed", content=image_bytes, headers=JPEG)
        assert hit.json()["cached"] is True
        (root,) = by_name(spans.get_finished_spans(), "POST /embed")
        found = in_trace(spans.get_finished_spans(), root)
        assert sorted(s.name for s in found) == ["POST /embed", "esam.cache.lookup"]
        (lookup,) = by_name(found, "esam.cache.lookup")
        assert (lookup.attributes or {})["esam.cache.outcome"] == "hit"

        spans.clear()
        body = {
            "image_id": hit.json()["image_id"],
            "prompts": [{"points": [[500, 300]], "labels": [1]}, {"box": [10, 10, 300, 200]}],
            "mask_format": "png",
        }
        assert (await gw.client.post("/segment", json=body)).status_code == 200
        (root,) = by_name(spans.get_finished_spans(), "POST /segment")
        assert root.parent is None
        found = in_trace(spans.get_finished_spans(), root)
        (decode,) = by_name(found, "esam.decode")
        assert (decode.attributes or {})["esam.prompts"] == 2
        # PNGs are made at the edge from the decoder's RLE, in a worker thread, after it
        (masks,) = by_name(found, "esam.masks.encode")
        assert (masks.attributes or {})["esam.mask_format"] == "png"
        assert (masks.attributes or {})["esam.masks"] == 6  # 2 prompts x 3 candidates
        assert under(masks, root, found)
        assert masks.start_time is not None
        assert decode.end_time is not None
        assert masks.start_time >= decode.end_time
        assert under(decode, root, found)
        assert not by_name(found, "esam.encode")


def test_outgoing_calls_carry_the_w3c_traceparent(spans: InMemorySpanExporter) -> None:
    assert trace_headers() == {}  # no span: nothing to propagate
    with tracer.start_as_current_span("outer") as span:
        headers = trace_headers()
    trace_id = format(span.get_span_context().trace_id, "032x")
    version, carried, _, flags = headers["traceparent"].split("-")
    assert (version, carried) == ("00", trace_id)
    assert int(flags, 16) & 1  # sampled


@pytest.mark.slow
def test_console_exporter_and_json_logs_of_a_real_process(
    fixture: Fixture, image_bytes: bytes, tmp_path: Path
) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    settings = {
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
        "ESAM_LOG_FORMAT": "json",
        "ESAM_LOG_LEVEL": "info",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "esam-test",
    }
    with GatewayProcess(settings, stdout=out, stderr=err) as gateway:
        embed = httpx.post(f"{gateway.url}/embed", content=image_bytes, headers=JPEG, timeout=60)
        assert embed.status_code == 200
        request_id = embed.headers["X-Request-Id"]
        bad = httpx.post(f"{gateway.url}/segment", json={"image_id": "0" * 64}, timeout=60)
        assert bad.status_code == 422
    exported = parse_console_spans(out.read_text())
    embed_trace = [s for s in exported if s["name"] == "POST /embed"]
    (root,) = embed_trace
    trace_id = root["context"]["trace_id"]
    names = {s["name"] for s in exported if s["context"]["trace_id"] == trace_id}
    assert {"POST /embed", "esam.cache.lookup", "esam.encode", "esam.cache.store"} <= names
    assert root["resource"]["attributes"]["service.name"] == "esam-test"

    lines = [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{")]
    assert lines, err.read_text()[-2000:]
    assert all({"time", "level", "logger", "message", "request_id"} <= set(e) for e in lines)
    access = [e for e in lines if e["logger"] == "uvicorn.access" and e.get("path") == "/embed"]
    assert access[0]["method"] == "POST"
    assert access[0]["status"] == 200
    # a log line written inside a request carries its request id and its trace
    refused = next(e for e in lines if "POST /segment -> invalid_" in e["message"])
    (segment_root,) = [s for s in exported if s["name"] == "POST /segment"]
    assert refused["trace_id"] == segment_root["context"]["trace_id"].removeprefix("0x")
    assert refused["request_id"] == bad.headers["X-Request-Id"]
    assert request_id != refused["request_id"]


def parse_console_spans(text: str) -> list[dict[str, Any]]:
    """The ConsoleSpanExporter's output: indented JSON objects, one after another."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while (start := text.find("{", index)) != -1:
        span, index = decoder.raw_decode(text, start)
        spans.append(span)
    return spans


async def test_each_triton_request_carries_the_encode_span_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    from service.core.encoders.triton_endpoint import TritonEndpoint
    from service.core.metrics import Metrics

    sent: list[dict[str, str] | None] = []

    class Result:
        def as_numpy(self, name: str) -> np.ndarray:
            return np.zeros((1, 256, 64, 64), np.float16) if name != "size" else np.array([[8, 6]])

    class Client:  # stands in for tritonclient's (the thing under test is the metadata)
        async def infer(
            self, *args: object, headers: dict[str, str] | None = None, **_: object
        ) -> Result:
            sent.append(headers)
            return Result()

    endpoint = TritonEndpoint(
        "127.0.0.1:1", protocol="grpc", model_name="efficientsam", metrics=Metrics()
    )
    endpoint._client = Client()
    endpoint._model_checked = True
    with tracer.start_as_current_span("esam.encode") as span:
        await endpoint._infer_once(b"jpeg bytes")
    await endpoint._infer_once(b"jpeg bytes")  # outside any span: no metadata at all
    trace_id = format(span.get_span_context().trace_id, "032x")
    span_id = format(span.get_span_context().span_id, "016x")
    assert sent[0] is not None
    assert sent[0]["traceparent"].split("-")[1:3] == [trace_id, span_id]
    assert sent[1] is None
