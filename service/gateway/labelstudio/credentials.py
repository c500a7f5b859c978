"""Label Studio's API key as request headers, sent only to Label Studio's own host.

``ESAM_LABEL_STUDIO_API_KEY`` is either a legacy token (``Authorization: Token <key>``)
or a Personal Access Token: a JWT refresh token that Label Studio 1.23 exchanges at
``POST /api/token/refresh/`` for a short-lived access token (``Bearer``). The access
token is kept until shortly before it expires, and dropped when Label Studio answers 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time

import httpx

from service.errors import ImageFetchError

#: renew this long before the access token's own expiry
EXPIRY_MARGIN_S = 30


def _jwt_claims(token: str) -> dict[str, object] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioCredentials:
    def __init__(self, base_url: str, api_key: str | None, client: httpx.AsyncClient) -> None:
        self.base = httpx.URL(base_url.rstrip("/") + "/")
        self._key = api_key
        self._client = client
        self._personal = api_key is not None and _jwt_claims(api_key) is not None
        self._access: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def owns(self, url: httpx.URL) -> bool:
        """``url`` is on Label Studio's own scheme, host and port (credentials go there only)."""
        return (url.scheme, url.host, url.port) == (
            self.base.scheme,
            self.base.host,
            self.base.port,
        )

    def resolve(self, path: str) -> str:
        """A path of Label Studio's (``/data/upload/...``) as an absolute URL."""
        return str(self.base.join(path.lstrip("/")))

    async def headers(self) -> dict[str, str]:
        if self._key is None:
            return {}
        if not self._personal:
            return {"Authorization": f"Token {self._key}"}
        async with self._lock:
            if self._access is None or time.time() >= self._expires:
                await self._refresh()
            return {"Authorization": f"Bearer {self._access}"}

    def forget(self) -> None:
        """Label Studio refused the access token: the next request exchanges the PAT again."""
        self._access = None

    async def _refresh(self) -> None:
        url = self.base.join("api/token/refresh/")
        try:
            response = await self._client.post(url, json={"refresh": self._key}, timeout=10)
        except httpx.HTTPError as exc:
            raise ImageFetchError(f"Label Studio token refresh at {url}: {exc}") from exc
        if response.status_code != 200 or "access" not in response.json():
            raise ImageFetchError(
                f"Label Studio refused the Personal Access Token (HTTP {response.status_code} "
                f"from {url}): check ESAM_LABEL_STUDIO_API_KEY"
            )
        self._access = str(response.json()["access"])
        claims = _jwt_claims(self._access) or {}
        expiry = claims.get("exp")
        lifetime = float(expiry) - time.time() if isinstance(expiry, int | float) else 300.0
        self._expires = time.time() + max(lifetime - EXPIRY_MARGIN_S, 1.0)
