"""The mask decoder in the gateway process: off the event loop, bounded concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from opentelemetry import trace
from prometheus_client import Histogram

from service.core.decoders.base import Candidate, DecodeRequest
from service.core.edges import EdgeMap, EdgeParams, edge_map
from service.core.embedding import Embedding
from service.core.everything import Box, Crop, EverythingParams, Proposal, segment_everything
from service.core.metrics import Metrics
from service.core.tenancy import PrioritySlots, bulk_share, current_priority
from service.core.tracing import in_context, tracer
from service.errors import OverloadedError
from service.model import EfficientSam, ranked_candidates
from service.model.masks import encode_rle, rle_area_bbox, upsample_masks

T = TypeVar("T")


class LocalDecoder:
    name = "local"
    mismatch: str | None = None  # the gateway's own model: always its checkpoint

    def __init__(
        self,
        model: EfficientSam,
        *,
        max_concurrency: int,
        metrics: Metrics,
        max_everything_jobs: int = 1,
        everything_memory_bytes: int = 256 << 20,
        interactive_share: float = 0.0,
    ) -> None:
        """``interactive_share``: of the ``max_concurrency`` slots, the share bulk work
        (segment everything, edges, ``X-Priority: bulk``) may not take."""
        self._model = model
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="esam-decoder")
        self._slots = PrioritySlots(max_concurrency, bulk_share(max_concurrency, interactive_share))
        self._everything_limit = max_everything_jobs
        self._everything_running = 0
        self._everything_memory = everything_memory_bytes

    @property
    def everything_jobs_running(self) -> int:
        return self._everything_running

    @property
    def has_free_slot(self) -> bool:
        """A decode would start at once (no thread busy with all the others)."""
        return not self._slots.locked(current_priority())

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def ready(self) -> bool:
        return True

    async def segment(self, request: DecodeRequest) -> list[list[Candidate]]:
        """One list of candidates per prompt, in prompt order, best score first."""
        async with self._slots.hold():
            start = time.perf_counter()
            loop = asyncio.get_running_loop()
            with tracer.start_as_current_span("esam.decode") as span:
                span.set_attribute("esam.prompts", len(request.points))
                result = await loop.run_in_executor(self._executor, in_context(self._run), request)
            self._metrics.decoder_duration.observe(time.perf_counter() - start)
            self._metrics.decoder_prompts.inc(len(request.points))
            return result

    async def everything(
        self,
        crops: Sequence[tuple[Box, Embedding]],
        params: EverythingParams,
    ) -> list[Proposal]:
        """Segment everything (a long job: at most ``max_everything_jobs`` at once, beyond
        which 429 at once; it shares the decoder's threads with clicks).

        ``crops``: the whole image's box and embedding first, then any crops'.
        """
        duration = self._metrics.everything_duration
        return await self._grid_job("everything", segment_everything, crops, params, duration)

    async def edges(
        self, image_id: str, crops: Sequence[tuple[Box, Embedding]], params: EdgeParams
    ) -> EdgeMap:
        """Edge detection on the point grid: a long job as ``everything`` (one limit for
        both)."""
        return await self._grid_job("edges", edge_map, crops, params, self._metrics.edges_duration)

    async def _grid_job(
        self,
        kind: str,
        procedure: Callable[..., T],
        crops: Sequence[tuple[Box, Embedding]],
        params: EverythingParams | EdgeParams,
        duration: Histogram,
    ) -> T:
        """``procedure`` (``segment_everything`` or ``edge_map``: the same signature) over
        the image and its crops, on a decoder thread as a long job (it shares the threads
        with clicks)."""
        _, whole = crops[0]
        prompts = len(crops) * params.points_per_side**2
        stop = threading.Event()

        def run() -> T:
            return procedure(
                self._model,
                [Crop(box, torch.from_numpy(e.as_float32())) for box, e in crops],
                whole.width,
                whole.height,
                params,
                memory_budget_bytes=self._everything_memory,
                cancelled=stop.is_set,
            )

        try:
            async with self.long_job(kind, prompts, len(crops), duration), self._slots.hold():
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, in_context(run))
        finally:
            stop.set()  # a cancelled request stops its job at the next batch

    @contextlib.asynccontextmanager
    async def long_job(
        self, kind: str, prompts: int, n_crops: int, duration: Histogram
    ) -> AsyncIterator[trace.Span]:
        """A segment-everything or edge job's place on this replica (429 at once when
        ``max_everything_jobs`` are running), its span and its duration; any backend's
        long jobs count here."""
        if self._everything_running >= self._everything_limit:
            raise OverloadedError(
                f"{self._everything_running} segment-everything or edge job(s) already "
                "running on this replica",
                retry_after_s=5,
            )
        self._everything_running += 1
        try:
            start = time.perf_counter()
            with tracer.start_as_current_span("esam.decode") as span:
                span.set_attributes(
                    {"esam.prompts": prompts, "esam.crops": n_crops, "esam.job": kind}
                )
                yield span
            duration.observe(time.perf_counter() - start)
            self._metrics.decoder_prompts.inc(prompts)
        finally:
            self._everything_running -= 1

    def _run(self, request: DecodeRequest) -> list[list[Candidate]]:
        embedding = torch.from_numpy(request.embedding.as_float32())
        with torch.inference_mode():
            logits, iou = self._model.decode_all(
                embedding, torch.from_numpy(request.points), torch.from_numpy(request.labels)
            )
            logits, iou = ranked_candidates(logits.cpu(), iou.cpu(), request.candidates)
        with tracer.start_as_current_span("esam.masks.upsample"):
            return self._masks(request, logits, iou)

    def _masks(
        self, request: DecodeRequest, logits: torch.Tensor, iou: torch.Tensor
    ) -> list[list[Candidate]]:
        """Full-size masks of the candidates (already chosen and ranked) as COCO RLE."""
        results = []
        for prompt_logits, prompt_iou in zip(logits, iou, strict=True):
            masks = upsample_masks(
                prompt_logits, request.embedding.height, request.embedding.width
            ).numpy()
            candidates = []
            for k in range(len(prompt_iou)):
                rle = encode_rle(masks[k])
                area, bbox = rle_area_bbox(rle)
                candidates.append(
                    Candidate(
                        score=float(prompt_iou[k]),
                        area=area,
                        bbox=bbox,
                        rle=rle,
                        logits=prompt_logits[k].numpy() if request.return_logits else None,
                    )
                )
            results.append(candidates)
        return results
