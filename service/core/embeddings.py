"""Image → embedding, at most once: cache tiers, in-process and cross-replica single flight.

Nothing is cached unless the whole encode succeeded, and nothing is encoded
for a request whose image or prompts are invalid (``check`` runs first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.core.cache import EmbeddingCache
from service.core.cache.redis_tier import RedisUnavailableError
from service.core.embedding import Embedding, EmbeddingDtype, image_id_of
from service.core.encoders import Encoder
from service.core.metrics import Metrics
from service.errors import EncoderUnavailableError, EsamError, ImageTooLargeError
from service.model.preprocess import decode_image, resize_to_model

log = logging.getLogger(__name__)

#: Called with (width, height) before anything is encoded; raises to refuse.
SizeCheck = Callable[[int, int], None]
_LOCK_POLL_S = 0.05


@dataclass(frozen=True)
class EmbedResult:
    image_id: str
    embedding: Embedding
    cached: bool


@dataclass(frozen=True)
class _Decoded:
    rgb: NDArray[np.uint8]

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


class EmbeddingService:
    def __init__(
        self,
        *,
        encoder: Encoder,
        cache: EmbeddingCache,
        metrics: Metrics,
        model_id: str,
        dtype: EmbeddingDtype,
        max_image_bytes: int,
        max_image_pixels: int,
        encode_timeout_s: float,
        lock_wait_s: float,
        img_size: int = 1024,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self.model_id = model_id
        self._metrics = metrics
        self._dtype: EmbeddingDtype = dtype
        self._max_image_bytes = max_image_bytes
        self._max_image_pixels = max_image_pixels
        self._encode_timeout_s = encode_timeout_s
        self._lock_wait_s = lock_wait_s
        self._img_size = img_size
        self._inflight: dict[str, asyncio.Task[Embedding]] = {}

    def key(self, image_id: str) -> str:
        """Cache key: a new checkpoint or preprocessing never serves old embeddings."""
        return f"{self.model_id}:{image_id}"

    # --- cache-only operations ----------------------------------------------------------
    async def lookup(self, image_id: str) -> Embedding | None:
        return await self.cache.get(self.key(image_id))

    async def contains(self, image_id: str) -> bool:
        return await self.cache.contains(self.key(image_id))

    async def delete(self, image_id: str) -> None:
        await self.cache.delete(self.key(image_id))

    # --- image → embedding ----------------------------------------------------------------
    async def embed(self, data: bytes, check: SizeCheck | None = None) -> EmbedResult:
        """Return the embedding of the image ``data``, encoding it only if no one has."""
        if len(data) > self._max_image_bytes:
            raise ImageTooLargeError(
                f"the image is {len(data)} bytes; the limit is {self._max_image_bytes}"
            )
        image_id = image_id_of(data)
        key = self.key(image_id)

        hit = await self.cache.get(key)
        if hit is not None:
            if check:
                check(hit.width, hit.height)
            return EmbedResult(image_id, hit, cached=True)

        task = self._inflight.get(key)
        if task is None:
            decoded = await asyncio.to_thread(self._decode, data)
            if check:
                check(decoded.width, decoded.height)
            task = self._inflight.get(key)  # another request may have started meanwhile
            if task is None:
                task = asyncio.create_task(self._encode(key, decoded), name=f"encode {image_id}")
                self._inflight[key] = task
                task.add_done_callback(lambda _: self._inflight.pop(key, None))
                return EmbedResult(image_id, await asyncio.shield(task), cached=False)

        self._metrics.singleflight_waits.labels("process").inc()
        embedding = await asyncio.shield(task)
        if check:
            check(embedding.width, embedding.height)
        return EmbedResult(image_id, embedding, cached=True)

    def _decode(self, data: bytes) -> _Decoded:
        return _Decoded(decode_image(data, max_pixels=self._max_image_pixels))

    async def _encode(self, key: str, image: _Decoded) -> Embedding:
        redis = self.cache.redis
        if redis is None:
            return await self._encode_and_store(key, image)
        async with redis.lock(key) as owned:
            if not owned:
                self._metrics.singleflight_waits.labels("redis_lock").inc()
                peer = await self._wait_for_peer(key)
                if peer is not None:
                    return peer
            else:
                done = await self.cache.get(key)  # a peer may have finished just before
                if done is not None:
                    return done
            return await self._encode_and_store(key, image)

    async def _wait_for_peer(self, key: str) -> Embedding | None:
        """Another replica is encoding: poll the cache until it lands or the lock goes."""
        redis = self.cache.redis
        assert redis is not None
        deadline = time.monotonic() + self._lock_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(_LOCK_POLL_S)
            found = await self.cache.get(key)
            if found is not None:
                return found
            try:
                if not await redis.lock_held(key):
                    return await self.cache.get(key)
            except RedisUnavailableError:  # Redis gone: stop waiting, encode here
                return None
        log.warning("waited %.1fs for another replica to encode %s", self._lock_wait_s, key)
        return None

    async def _encode_and_store(self, key: str, image: _Decoded) -> Embedding:
        pixels = await asyncio.to_thread(self._pixels, image)
        start = time.perf_counter()
        try:
            out = await asyncio.wait_for(self.encoder.encode(pixels), self._encode_timeout_s)
        except TimeoutError as exc:
            self._metrics.encoder_errors.labels("timeout").inc()
            raise EncoderUnavailableError(
                f"the encoder did not answer within {self._encode_timeout_s:g}s"
            ) from exc
        except EsamError as exc:
            self._metrics.encoder_errors.labels(exc.code).inc()
            raise
        self._metrics.encoder_images.inc()
        log.debug("encoded %s in %.3fs", key, time.perf_counter() - start)
        embedding = Embedding.from_float32(out, image.width, image.height, self._dtype)
        await self.cache.put(key, embedding)
        return embedding

    def _pixels(self, image: _Decoded) -> NDArray[np.float32]:
        pixels: NDArray[np.float32] = resize_to_model(image.rgb, self._img_size).numpy()
        return pixels
