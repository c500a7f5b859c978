"""``EsamClient`` and ``AsyncEsamClient``: the same calls, sent with httpx's sync or
async client. What to send and how to read it is ``esam_client.protocol``'s."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import numpy as np
from numpy.typing import NDArray

from esam_client import protocol
from esam_client.errors import UnreachableError
from esam_client.models import Embedded, Everything, Prompt, Segmentation
from esam_client.protocol import Endpoint, Flow, Priority, T

Image = str | Path | bytes


def _read(image: Image) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _load_npy(data: bytes) -> NDArray[Any]:
    array: NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    return array


def _unreachable(request: httpx.Request, attempt: int, exc: Exception) -> UnreachableError:
    return UnreachableError(
        f"{request.method} {request.url}: no answer after {attempt + 1} attempts "
        f"({type(exc).__name__}: {exc})"
    )


class EsamClient:
    """Blocking client. ``retries``: how often a 429/503 or a lost connection is retried
    (after ``Retry-After``, else an exponential backoff from ``backoff_s``); ``priority``
    ``bulk`` marks every request as work nobody waits on (``X-Priority``)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        priority: Priority | None = None,
        timeout_s: float = 300.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = Endpoint(url, api_key, priority)
        self.retries, self.backoff_s = retries, backoff_s
        self._http = httpx.Client(timeout=timeout_s, transport=transport)

    def _send(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response: httpx.Response | None = None
            try:
                response = self._http.send(request)
                response.read()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise _unreachable(request, attempt, exc) from exc
            delay = protocol.retry_delay(response, attempt, self.backoff_s)
            if response is not None and (delay is None or attempt == self.retries):
                return response
            time.sleep(delay or 0.0)
        raise AssertionError("unreachable")

    def _run(self, flow: Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                request = flow.send(self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    def embed(self, image: Image) -> Embedded:
        """Make sure the gateway holds the image's embedding; upload only when it does not."""
        return self._run(protocol.embed(self.endpoint, _read(image)))

    def segment(
        self,
        prompts: Sequence[Prompt],
        *,
        image: Image | None = None,
        image_id: str | None = None,
        multimask: protocol.Multimask = True,
        best_only: bool = False,
    ) -> Segmentation:
        """By id; with ``image`` given, a 404 (evicted) uploads it once and asks again.
        ``best_only``: only the best of the three multimask candidates per prompt."""
        data = None if image is None else _read(image)
        flow = protocol.segment(
            self.endpoint,
            prompts,
            image_id=image_id,
            data=data,
            multimask=multimask,
            best_only=best_only,
        )
        return self._run(flow)

    def everything(
        self, *, image: Image | None = None, image_id: str | None = None, **params: Any
    ) -> Everything:
        data = None if image is None else _read(image)
        return self._run(protocol.everything(self.endpoint, image_id=image_id, data=data, **params))

    def embedding(self, image_id: str) -> NDArray[Any]:
        """The cached embedding ``[1, 256, 64, 64]`` (float16 or float32 as cached; float16
        dequantised from int8 records)."""
        return _load_npy(self._run(protocol.embedding(self.endpoint, image_id)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncEsamClient:
    """The same calls as ``EsamClient``, awaitable (for bulk work at a concurrency)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        priority: Priority | None = None,
        timeout_s: float = 300.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = Endpoint(url, api_key, priority)
        self.retries, self.backoff_s = retries, backoff_s
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self._http.send(request)
                await response.aread()
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise _unreachable(request, attempt, exc) from exc
            delay = protocol.retry_delay(response, attempt, self.backoff_s)
            if response is not None and (delay is None or attempt == self.retries):
                return response
            await asyncio.sleep(delay or 0.0)
        raise AssertionError("unreachable")

    async def _run(self, flow: Flow[T]) -> T:
        try:
            request = next(flow)
            while True:
                request = flow.send(await self._send(request))
        except StopIteration as done:
            result: T = done.value
            return result

    async def embed(self, image: Image) -> Embedded:
        return await self._run(protocol.embed(self.endpoint, _read(image)))

    async def segment(
        self,
        prompts: Sequence[Prompt],
        *,
        image: Image | None = None,
        image_id: str | None = None,
        multimask: protocol.Multimask = True,
        best_only: bool = False,
    ) -> Segmentation:
        data = None if image is None else _read(image)
        flow = protocol.segment(
            self.endpoint,
            prompts,
            image_id=image_id,
            data=data,
            multimask=multimask,
            best_only=best_only,
        )
        return await self._run(flow)

    async def everything(
        self, *, image: Image | None = None, image_id: str | None = None, **params: Any
    ) -> Everything:
        data = None if image is None else _read(image)
        flow = protocol.everything(self.endpoint, image_id=image_id, data=data, **params)
        return await self._run(flow)

    async def embedding(self, image_id: str) -> NDArray[Any]:
        return _load_npy(await self._run(protocol.embedding(self.endpoint, image_id)))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
