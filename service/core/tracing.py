"""OpenTelemetry spans around the work that decides latency (no HTTP here).

The API is a no-op until a tracer provider is installed (``configure_tracing``,
called at start-up when ``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
is set); the spans below then join the request's server span:

* ``esam.cache.lookup`` (``esam.cache.tier``, ``esam.cache.outcome``: hit / miss / error)
* ``esam.cache.store`` (``esam.cache.tier``)
* ``esam.singleflight.wait`` (``esam.singleflight.scope``: process / redis_lock)
* ``esam.encode`` (``esam.encoder``: local / triton; ``esam.batch_wait_ms`` where known)
* ``esam.decode`` (``esam.prompts``)
* ``esam.masks.upsample`` (the local decoder: full-size masks and their COCO RLE)
* ``esam.masks.encode`` (``esam.mask_format``, ``esam.masks``: PNG or polygons, made at
  the edge from the RLE)

Everything else (service name, sampler, exporter endpoint, batch sizes) comes from
the standard ``OTEL_*`` variables, read by the SDK itself.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from opentelemetry import propagate, trace

tracer = trace.get_tracer("esam")

P = ParamSpec("P")
T = TypeVar("T")


def in_context(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` bound to the caller's context (current span included), for another thread:
    ``loop.run_in_executor`` does not carry context variables by itself."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.run(fn, *args, **kwargs)

    return run


def trace_headers() -> dict[str, str]:
    """W3C ``traceparent`` (and ``tracestate``) of the current span, for an outgoing call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def configure_tracing(exporters: list[str], *, instrument_redis: bool = True) -> Any:
    """Install the SDK's tracer provider with the named exporters (``otlp``, ``console``).

    Returns the provider (to shut down at exit), or None when ``exporters`` is empty.
    """
    if not exporters:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME, OTEL_RESOURCE_*
    for name in exporters:
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if instrument_redis:
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument(tracer_provider=provider)
    return provider
