"""Bearer API keys (``ESAM_API_KEYS``), checked in pure ASGI before the body is read.

A request without a valid key gets its 401 as soon as its headers have arrived:
no byte of its body is received or parsed. ``/healthz``, ``/readyz`` and
``/metrics`` stay open (probes and scrapers), and the demo page's files under ``/ui``
but for the model it decodes with in the browser (``/ui/models/``: weights);
every other path, ``/docs`` and ``/openapi.json`` included, needs the key. Keys are
compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import UnauthorizedError
from service.gateway.errors import render

#: Paths served without a key: liveness, readiness and metrics.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: the demo page's static files (no secret in them; its API calls carry the key)
OPEN_PREFIX = "/ui"
#: below the page: the model's weights, fetched by the page with the key
KEYED_UI_PREFIX = "/ui/models/"


def is_open(path: str) -> bool:
    if path in OPEN_PATHS or path == OPEN_PREFIX:
        return True
    return path.startswith(OPEN_PREFIX + "/") and not path.startswith(KEYED_UI_PREFIX)


def check_bearer(authorization: str, keys: Sequence[str]) -> None:
    """Raise :class:`UnauthorizedError` unless ``authorization`` is ``Bearer <a key>``."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    supplied = token.strip().encode()
    matched = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        matched |= hmac.compare_digest(supplied, key.encode())
    if not matched:
        raise UnauthorizedError("invalid API key")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            check_bearer(authorization, self.keys)
        except UnauthorizedError as exc:
            response = render(exc)
            response.headers["Connection"] = "close"  # the unread body is not waited for
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
