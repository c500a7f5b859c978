"""Per request, after the key: its priority (``X-Priority``), its tenant's rate limit, and
the tenant as a FastAPI dependency.

``X-Priority: bulk`` marks work nobody waits on (``esam embed``, Label Studio's batch
predictions, segment everything); ``interactive`` is the default. An unknown value is
refused (422 ``invalid_request``) before the body is read. The priority and the tenant
are set for the rest of the request (``core.tenancy.priority_scope``): the decoder's
slots go to waiting tenants in turn.

Each tenant may send ``ESAM_TENANT_RPS`` requests per second to this replica (with a
burst of ``ESAM_TENANT_BURST``; per-tenant overrides in ``ESAM_TENANT_LIMITS``): beyond
it, 429 ``tenant_limit`` at once, with ``Retry-After``. The limit is per replica: N
replicas behind a balancer allow a tenant N times as much.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.metrics import Metrics
from service.core.tenancy import PRIORITIES, priority_scope
from service.errors import InvalidRequestError, TenantLimitError
from service.gateway.auth import is_open, tenant_of
from service.gateway.errors import render
from service.settings import Settings

PRIORITY_HEADER = "X-Priority"
_PRIORITY_HEADER = PRIORITY_HEADER.lower().encode()
_PRIORITIES = {p.encode(): p for p in PRIORITIES}


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


class TenancyMiddleware:
    def __init__(self, app: ASGIApp, *, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self._settings = settings
        self._metrics = metrics
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, tenant: str) -> TokenBucket | None:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            limits = self._settings.limits_for(tenant)
            if not limits.rps:
                return None
            bucket = self._buckets[tenant] = TokenBucket(limits.rps, limits.burst or 1)
        return bucket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == _PRIORITY_HEADER), b"interactive")
        priority = _PRIORITIES.get(raw.strip().lower())
        if priority is None:
            error = InvalidRequestError(
                f"{PRIORITY_HEADER}: expected 'interactive' or 'bulk', "
                f"got {raw[:40].decode('latin-1')!r}"
            )
            await render(error)(scope, receive, send)
            return
        tenant = tenant_of(scope)
        self._metrics.tenant_requests.labels(tenant, priority).inc()
        bucket = self._bucket(tenant)
        wait = bucket.take() if bucket is not None else 0.0
        if wait:
            self._metrics.tenant_refused.labels(tenant, "rate").inc()
            assert bucket is not None
            limit = TenantLimitError(
                f"tenant {tenant!r} is limited to {bucket.rate:g} requests/s on this replica "
                f"(burst {bucket.burst}; ESAM_TENANT_RPS / ESAM_TENANT_LIMITS)",
                retry_after_s=max(1, math.ceil(wait)),
            )
            await render(limit)(scope, receive, send)
            return
        with priority_scope(priority, tenant):
            await self.app(scope, receive, send)


def _tenant(request: Request) -> str:
    return tenant_of(request.scope)


#: the tenant of the request's API key (``default`` when none is configured)
Tenant = Annotated[str, Depends(_tenant)]
