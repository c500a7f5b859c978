"""An in-process gateway (real lifespan, real model from the fixture) and a real Redis."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from service.core.encoders import EncodedImage, Encoder
from service.core.loading import LoadedModel, load_serving_model
from service.core.metrics import Metrics
from service.gateway import build_app
from service.gateway.state import ServingState, build_encoder
from service.model.preprocess import ImageHeader
from service.settings import Settings
from tests.conftest import Fixture
from tests.services import RedisServer, redis_answers

SYSTEM_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when it answers, else a redis-server started for the session."""
    if redis_answers(SYSTEM_REDIS):
        yield SYSTEM_REDIS
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis this test may stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def image_bytes(fixture: Fixture) -> bytes:
    return fixture.image_path.read_bytes()


class Gateway:
    """A running app and a client for it."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def state(self) -> ServingState:
        state: ServingState = self.app.state.serving
        return state

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.state.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)

    def metric_sum(self, name: str) -> float:
        """``name`` summed over all its label values (e.g. Redis errors of every operation)."""
        return sum(
            sample.value
            for family in self.state.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    @property
    def encodes(self) -> float:
        return self.metric("esam_encoder_images_total")


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]

#: (model id, precision, SHA-256 of the file) -> what the real encoder made of it
EncodeMemo = dict[tuple[str, str, bytes], EncodedImage]


class RememberingEncoder:
    """The real encoder, run once per distinct image file in the test session.

    Tests of HTTP behaviour upload the same few images again and again, each time to a
    gateway with an empty cache; every first encode of a file still runs the real
    encoder (its decoding, its errors, its deadline), a repeat is handed the embedding
    it made then. The gateway above it cannot tell: it still counts, caches and
    single-flights each encode (``esam_encoder_images_total`` is counted there). Tests
    of the encoder itself ask ``gateway_factory(real_encoder=True)``.
    """

    def __init__(self, inner: Encoder, memo: EncodeMemo, key: tuple[str, str]) -> None:
        self._inner = inner
        self._memo = memo
        self._key = key
        self.name = inner.name

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    async def ready(self) -> bool:
        return await self._inner.ready()

    async def encode(self, data: bytes, header: ImageHeader) -> EncodedImage:
        key = (*self._key, hashlib.sha256(data).digest())
        known = self._memo.get(key)
        if known is None:
            known = await self._inner.encode(data, header)
            self._memo[key] = known
        return EncodedImage(known.embedding, header.width, header.height)


@pytest.fixture(scope="session")
def encode_memo() -> EncodeMemo:
    return {}


@pytest.fixture(scope="session")
def serving_models() -> dict[tuple[str, str | None, str], LoadedModel]:
    """Models loaded once per (checkpoint, variant, device) for every in-process gateway
    (read-only at serving time: encoder and decoder run them under inference mode)."""
    return {}


@pytest.fixture
def gateway_factory(
    request: pytest.FixtureRequest,
    fixture: Fixture,
    encode_memo: EncodeMemo,
    serving_models: dict[tuple[str, str | None, str], LoadedModel],
) -> GatewayFactory:
    prefix = f"test-{uuid.uuid4().hex[:12]}"

    @asynccontextmanager
    async def make(
        configure: Callable[[FastAPI], None] | None = None,
        *,
        real_encoder: bool | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Gateway]:
        """``configure`` may add routes to the app before it starts (tests of the app shell);
        ``real_encoder``: every encode runs the encoder (tests of single flight and of the
        encoder's timing; the default for a test marked ``real_encoder``)."""
        if real_encoder is None:
            real_encoder = request.node.get_closest_marker("real_encoder") is not None
        values: dict[str, Any] = {
            "checkpoint": str(fixture.checkpoint),
            "redis_key_prefix": prefix,
            "max_concurrent_decodes": 2,
            # a test about the encode deadline sets its own: elsewhere a CPU encode on a busy
            # machine (the suite runs on two workers) must not fail for being slow
            "encode_timeout_s": 300,
        }
        values.update(overrides)
        settings = Settings(**values)
        model = None
        if settings.checkpoint not in (None, "random"):
            key = (settings.checkpoint, settings.variant, settings.decoder_device)
            if key not in serving_models:
                serving_models[key] = load_serving_model(*key)
            model = serving_models[key]

        def remembering(settings: Settings, loaded: LoadedModel, metrics: Metrics) -> Encoder:
            encoder = build_encoder(settings, loaded, metrics)
            # random weights differ from one gateway to the next under one model id
            if real_encoder or settings.encoder != "local" or model is None:
                return encoder
            return RememberingEncoder(
                encoder, encode_memo, (loaded.model_id, settings.encoder_precision)
            )

        app = build_app(settings, model=model, encoder_builder=remembering)
        if configure is not None:
            configure(app)
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gateway", timeout=120
            ) as client:
                yield Gateway(app, client)

    return make


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as running:
        yield running
