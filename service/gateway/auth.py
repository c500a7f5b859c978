"""Bearer API keys (``ESAM_API_KEYS``), compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from service.errors import UnauthorizedError
from service.gateway.state import State


def require_api_key(request: Request, state: State) -> None:
    keys = state.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
    supplied = token.strip().encode()
    matched = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        matched |= hmac.compare_digest(supplied, key.encode())
    if not matched:
        raise UnauthorizedError("invalid API key")


ApiKey = Depends(require_api_key)
