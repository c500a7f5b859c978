"""Image → embedding, at most once: cache tiers, in-process and cross-replica single flight.

The order of work for a new image bounds what a request can cost: hash, cache
lookup, join an encode already running for it, read the header (format, size,
pixel limit, the caller's prompt checks), take a pending-encode slot (429 when
none is left), and only then hand the bytes to the encoder, which decodes them
where it runs (in this process, or beside the model in Triton).
Nothing is cached unless the whole encode succeeded.

Embeddings are stored once per content; the tenant of every request that sent the
image is recorded beside it, and the by-id operations (``lookup``, ``contains``,
``delete``) see only the caller's tenant's (another tenant's image is an unknown one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.core.admission import Admission, Slot
from service.core.cache import EmbeddingCache
from service.core.embedding import Embedding, EmbeddingDtype, image_id_of
from service.core.encoders import Encoder
from service.core.metrics import Metrics
from service.core.tracing import tracer
from service.errors import ImageTooLargeError
from service.model.preprocess import ImageHeader, read_header

log = logging.getLogger(__name__)

#: Called with (width, height) before anything is encoded; raises to refuse.
SizeCheck = Callable[[int, int], None]


@dataclass(frozen=True)
class EmbedResult:
    image_id: str
    embedding: Embedding
    #: the embedding was in the cache when asked; False when this request waited for an
    #: encode (its own, or one already running for the image, here or on another replica)
    cached: bool


class EmbeddingService:
    def __init__(
        self,
        *,
        encoder: Encoder,
        cache: EmbeddingCache,
        metrics: Metrics,
        model_id: str,
        dtype: EmbeddingDtype,
        admission: Admission,
        max_image_bytes: int,
        max_image_pixels: int,
    ) -> None:
        self.encoder = encoder
        self.cache = cache
        self.model_id = model_id
        self._metrics = metrics
        self._dtype: EmbeddingDtype = dtype
        self._max_image_bytes = max_image_bytes
        self._max_image_pixels = max_image_pixels
        self.admission = admission
        self._inflight: dict[str, asyncio.Task[Embedding]] = {}

    def key(self, image_id: str) -> str:
        """Cache key: a new checkpoint or preprocessing never serves old embeddings."""
        return f"{self.model_id}:{image_id}"

    # --- cache-only operations, by id: the tenant's own images only ---------------------
    async def lookup(self, image_id: str, *, tenant: str) -> Embedding | None:
        return await self.cache.get_for(self.key(image_id), tenant)

    async def contains(self, image_id: str, *, tenant: str) -> bool:
        return await self.cache.holds(self.key(image_id), tenant)

    async def delete(self, image_id: str, *, tenant: str) -> None:
        """The tenant's access goes; the embedding with the last tenant's."""
        await self.cache.release(self.key(image_id), tenant)

    # --- image → embedding ----------------------------------------------------------------
    async def embed(
        self, data: bytes, *, tenant: str, check: SizeCheck | None = None
    ) -> EmbedResult:
        """Return the embedding of the image ``data``, encoding it only if no one has
        (whichever tenant), and record that ``tenant`` holds it."""
        result = await self._embed(data, tenant, check)
        await self.cache.grant(self.key(result.image_id), tenant)
        return result

    async def _embed(self, data: bytes, tenant: str, check: SizeCheck | None) -> EmbedResult:
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
            header = read_header(data, self._max_image_pixels)  # no pixel decoded
            if check:
                check(header.width, header.height)
            slot = self.admission.enter(tenant)  # 429 here, before any decoding
            task = asyncio.create_task(
                self._encode(key, data, header, slot), name=f"encode {image_id}"
            )
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
            return EmbedResult(image_id, await asyncio.shield(task), cached=False)

        self._metrics.singleflight_waits.labels("process").inc()
        with tracer.start_as_current_span("esam.singleflight.wait") as span:
            span.set_attribute("esam.singleflight.scope", "process")
            embedding = await asyncio.shield(task)
        if check:
            check(embedding.width, embedding.height)
        return EmbedResult(image_id, embedding, cached=False)  # it waited for an encode

    async def _encode(self, key: str, data: bytes, header: ImageHeader, slot: Slot) -> Embedding:
        try:
            return await self._encode_once(key, data, header)
        finally:
            slot.release()

    async def _encode_once(self, key: str, data: bytes, header: ImageHeader) -> Embedding:
        """Once across replicas too (the cache's single flight); stored before it returns."""
        return await self.cache.produce_once(key, lambda: self._encoded(key, data, header))

    async def _encoded(self, key: str, data: bytes, header: ImageHeader) -> Embedding:
        start = time.perf_counter()
        with tracer.start_as_current_span("esam.encode") as span:
            span.set_attributes({"esam.encoder": self.encoder.name, "esam.image_bytes": len(data)})
            out = await self.encoder.encode(data, header)  # the encoder owns the deadline
        self._metrics.encoder_images.inc()
        log.debug("encoded %s in %.3fs", key, time.perf_counter() - start)
        return Embedding.from_array(out.embedding, out.width, out.height, self._dtype)
