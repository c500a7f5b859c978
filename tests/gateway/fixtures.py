"""An in-process gateway (real lifespan, real model from the fixture) and a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from service.gateway import build_app
from service.gateway.state import ServingState
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

    @property
    def encodes(self) -> float:
        return self.metric("esam_encoder_images_total")


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gateway_factory(fixture: Fixture) -> GatewayFactory:
    prefix = f"test-{uuid.uuid4().hex[:12]}"

    @asynccontextmanager
    async def make(
        configure: Callable[[FastAPI], None] | None = None, **overrides: Any
    ) -> AsyncIterator[Gateway]:
        """``configure`` may add routes to the app before it starts (tests of the app shell)."""
        values: dict[str, Any] = {
            "checkpoint": str(fixture.checkpoint),
            "redis_key_prefix": prefix,
            "max_concurrent_decodes": 2,
        }
        values.update(overrides)
        settings = Settings(**values)
        app = build_app(settings)
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
