"""In-process encoder: decode on a bounded pool, then the project's model, micro-batched."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numpy.typing import NDArray
from opentelemetry import trace

from service.core.batching import Batcher
from service.core.encoders.base import EncodedImage
from service.core.metrics import Metrics
from service.core.tenancy import current_rank
from service.errors import EncoderUnavailableError
from service.model import EfficientSam, Precision
from service.model.preprocess import ImageHeader, load_for_model


class LocalEncoder:
    name = "local"

    def __init__(
        self,
        model: EfficientSam,
        *,
        precision: Precision,
        max_batch: int,
        timeout_s: float,
        max_concurrent_decodes: int,
        max_image_pixels: int,
        metrics: Metrics,
    ) -> None:
        self._model = model
        self._precision = precision
        self._metrics = metrics
        self.timeout_s = timeout_s
        self._max_image_pixels = max_image_pixels
        self._img_size = model.config.img_size
        # its own threads: at most this many full-resolution decodes at once
        self._decode_pool = ThreadPoolExecutor(
            max_concurrent_decodes, thread_name_prefix="esam-image-decode"
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="esam-encoder")
        self._batcher: Batcher[NDArray[np.float32], NDArray[np.float32]] = Batcher(
            self._run, max_batch=max_batch
        )

    async def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    async def ready(self) -> bool:
        return True

    async def encode(self, data: bytes, header: ImageHeader) -> EncodedImage:
        """Decode, resize and encode within ``timeout_s`` (the only deadline on this path).

        The batch queue itself is unbounded: ``core.admission`` bounds the encodes pending
        in this process before any image is decoded.
        """
        try:
            embedding = await asyncio.wait_for(self._encode(data), self.timeout_s)
        except TimeoutError as exc:
            self._metrics.encoder_errors.labels("timeout").inc()
            raise EncoderUnavailableError(
                f"the encoder did not answer within {self.timeout_s:g}s"
            ) from exc
        return EncodedImage(embedding, header.width, header.height)

    async def _encode(self, data: bytes) -> NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        span = trace.get_current_span()  # esam.encode, when tracing
        start = time.perf_counter()
        pixels = await loop.run_in_executor(self._decode_pool, self._decode, data)
        decoded = time.perf_counter()
        embedding = await self._batcher.submit(pixels, rank=current_rank())
        span.set_attributes(
            {
                "esam.image_decode_ms": round((decoded - start) * 1e3, 2),
                # waiting for a batch to form and the batch's run
                "esam.batch_ms": round((time.perf_counter() - decoded) * 1e3, 2),
            }
        )
        return embedding

    def _decode(self, data: bytes) -> NDArray[np.float32]:
        self._metrics.image_decodes.inc()
        try:
            pixels: NDArray[np.float32] = load_for_model(
                data, self._max_image_pixels, self._img_size
            ).numpy()
            return pixels
        finally:
            self._metrics.image_decodes.dec()

    async def _run(self, batch: list[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        out = await loop.run_in_executor(self._executor, self._forward, np.stack(batch))
        self._metrics.encoder_duration.observe(time.perf_counter() - start)
        self._metrics.encoder_batch_size.observe(len(batch))
        return list(out)

    def _forward(self, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.inference_mode():
            out = self._model.embed(torch.from_numpy(pixels), self._precision)
        result: NDArray[np.float32] = out.cpu().numpy()
        return result
