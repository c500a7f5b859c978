"""Bearer API keys (``ESAM_API_KEYS``), checked in pure ASGI before the body is read.

A request without a valid key gets its 401 as soon as its headers have arrived:
no byte of its body is received or parsed. ``/healthz``, ``/readyz`` and
``/metrics`` stay open (probes and scrapers), and the demo page's files under ``/ui``
but for the model it decodes with in the browser (``/ui/models/``: weights);
every other path, ``/docs`` and ``/openapi.json`` included, needs the key. Label Studio
can only send HTTP Basic: under ``/labelstudio/`` a key is also accepted as the Basic
password (any user name), and a 401 there asks for Basic (``WWW-Authenticate``). Keys are
compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
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


#: Label Studio's ML backend protocol: HTTP Basic only
BASIC_PREFIX = "/labelstudio"


def accepts_basic(path: str) -> bool:
    return path == BASIC_PREFIX or path.startswith(BASIC_PREFIX + "/")


def _basic_password(token: str) -> str:
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise UnauthorizedError("malformed Basic credentials") from exc
    _, separator, password = decoded.partition(":")
    if not separator:
        raise UnauthorizedError("malformed Basic credentials")
    return password


def check_bearer(authorization: str, keys: Sequence[str], *, basic: bool = False) -> None:
    """Raise :class:`UnauthorizedError` unless ``authorization`` is ``Bearer <a key>``
    (or, with ``basic``, ``Basic`` with a key as the password)."""
    scheme, _, token = authorization.partition(" ")
    if basic and scheme.lower() == "basic":
        token = _basic_password(token)
    elif scheme.lower() != "bearer" or not token.strip():
        how = "Basic with the key as password" if basic else "'Authorization: Bearer <key>'"
        raise UnauthorizedError(f"missing API key: send {how}")
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
        basic = accepts_basic(scope["path"])
        try:
            check_bearer(authorization, self.keys, basic=basic)
        except UnauthorizedError as exc:
            response = render(exc)
            response.headers["Connection"] = "close"  # the unread body is not waited for
            if basic:
                response.headers["WWW-Authenticate"] = 'Basic realm="efficientsam"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
