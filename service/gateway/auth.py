"""Bearer API keys (``ESAM_API_KEYS``, ``ESAM_API_KEYS_FILE``), checked in pure ASGI
before the body is read; the key names the request's tenant.

A request without a valid key gets its 401 as soon as its headers have arrived:
no byte of its body is received or parsed. ``/healthz``, ``/readyz`` and
``/metrics`` stay open (probes and scrapers), and the demo page's files under ``/ui``
but for the model it decodes with in the browser (``/ui/models/``: weights);
every other path, ``/docs`` and ``/openapi.json`` included, needs the key. Label Studio
can only send HTTP Basic: under ``/labelstudio/`` a key is also accepted as the Basic
password (any user name), and a 401 there asks for Basic (``WWW-Authenticate``). Keys are
compared in constant time.

The tenant of the key (``tenant:key`` entries; a bare key's is ``default``, as is every
request when no key is configured) is put in the request's scope (:func:`tenant_of`).
A keys file is looked at again at most once a second and re-read when it changed (a
Kubernetes Secret's update swaps the file): keys rotate without a restart. A version
that cannot be read or parsed is logged and ignored; the last good keys stay in force.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.tenancy import DEFAULT_TENANT, ApiKey, parse_keys, split_entries
from service.errors import UnauthorizedError
from service.gateway.errors import render

log = logging.getLogger(__name__)

#: where the middleware leaves the request's tenant in its ASGI scope
TENANT_SCOPE_KEY = "esam.tenant"

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


def _supplied_key(authorization: str, basic: bool) -> str:
    scheme, _, token = authorization.partition(" ")
    if basic and scheme.lower() == "basic":
        token = _basic_password(token)
    elif scheme.lower() != "bearer" or not token.strip():
        how = "Basic with the key as password" if basic else "'Authorization: Bearer <key>'"
        raise UnauthorizedError(f"missing API key: send {how}")
    return token.strip()


def check_bearer(authorization: str, keys: Sequence[ApiKey], *, basic: bool = False) -> str:
    """The tenant of the key in ``authorization`` (``Bearer <key>``, or with ``basic``
    ``Basic`` with a key as the password), or :class:`UnauthorizedError`."""
    supplied = _supplied_key(authorization, basic).encode()
    tenant = None
    for entry in keys:  # no early exit: the time taken does not depend on which key matched
        if hmac.compare_digest(supplied, entry.key.encode()):
            tenant = entry.tenant
    if tenant is None:
        raise UnauthorizedError("invalid API key")
    return tenant


class KeyTable:
    """The keys in force: ``ESAM_API_KEYS`` and, re-read when it changes, the keys file."""

    def __init__(
        self, entries: Sequence[str], file: Path | None = None, *, recheck_s: float = 1.0
    ) -> None:
        self._static = parse_keys(entries)
        self._file = file
        self._recheck_s = recheck_s
        self._checked_at = 0.0
        self._version: tuple[int, int, int] | None = None
        self._from_file: list[ApiKey] = []
        self._all = self._static
        if file is not None:
            self._reload()

    @property
    def enabled(self) -> bool:
        return bool(self._static) or self._file is not None

    def keys(self) -> list[ApiKey]:
        if self._file is not None and time.monotonic() - self._checked_at >= self._recheck_s:
            self._reload()
        return self._all

    def _reload(self) -> None:
        assert self._file is not None
        self._checked_at = time.monotonic()
        try:
            info = os.stat(self._file)
            version = (info.st_ino, info.st_mtime_ns, info.st_size)
            if version == self._version:
                return
            keys = parse_keys(split_entries(self._file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.error(
                "API keys file %s not (re)loaded, the last good keys stay: %s", self._file, exc
            )
            return
        self._version = version
        if keys != self._from_file:
            log.info("API keys file %s loaded: %d key(s)", self._file, len(keys))
        self._from_file = keys
        self._all = self._static + keys


def tenant_of(scope: Scope) -> str:
    """The tenant the middleware found for this request (``default`` without keys)."""
    tenant = scope.get(TENANT_SCOPE_KEY, DEFAULT_TENANT)
    return str(tenant)


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: KeyTable) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = ""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        basic = accepts_basic(scope["path"])
        try:
            scope[TENANT_SCOPE_KEY] = check_bearer(authorization, self.keys.keys(), basic=basic)
        except UnauthorizedError as exc:
            response = render(exc)
            response.headers["Connection"] = "close"  # the unread body is not waited for
            if basic:
                response.headers["WWW-Authenticate"] = 'Basic realm="efficientsam"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
