"""The mask decoder in the gateway process: off the event loop, bounded concurrency."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from service.core.embedding import Embedding
from service.core.everything import Box, Crop, EverythingParams, Proposal, segment_everything
from service.core.metrics import Metrics
from service.core.tracing import in_context, tracer
from service.errors import OverloadedError
from service.model import EfficientSam
from service.model.masks import (
    encode_png,
    encode_rle,
    mask_to_polygons,
    rle_area_bbox,
    upsample_masks,
)

#: the wire formats, and "array": the boolean mask itself (for adapters that encode it)
MaskFormat = Literal["rle", "png", "polygons", "none", "array"]


@dataclass(frozen=True)
class Candidate:
    score: float
    area: int
    bbox: list[float]
    mask: Any  # per format: RLE dict, base64 PNG, polygon list, bool array or None
    logits: NDArray[np.float32] | None


@dataclass(frozen=True)
class DecodeRequest:
    embedding: Embedding
    points: NDArray[np.float32]  # [N, 6, 2], model frame
    labels: NDArray[np.float32]  # [N, 6]
    multimask: bool
    mask_format: MaskFormat
    return_logits: bool


@dataclass(frozen=True)
class EverythingMask:
    proposal: Proposal
    mask: Any  # per format, as Candidate.mask


class Decoder:
    def __init__(
        self,
        model: EfficientSam,
        *,
        max_concurrency: int,
        metrics: Metrics,
        max_everything_jobs: int = 1,
        everything_memory_bytes: int = 256 << 20,
    ) -> None:
        self._model = model
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="esam-decoder")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._everything_limit = max_everything_jobs
        self._everything_running = 0
        self._everything_memory = everything_memory_bytes

    @property
    def everything_jobs_running(self) -> int:
        return self._everything_running

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def segment(self, request: DecodeRequest) -> list[list[Candidate]]:
        """One list of candidates per prompt, in prompt order, best score first."""
        async with self._slots:
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
        mask_format: MaskFormat,
    ) -> list[EverythingMask]:
        """Segment everything (a long job: at most ``max_everything_jobs`` at once, beyond
        which 429 at once; it shares the decoder's threads with clicks).

        ``crops``: the whole image's box and embedding first, then any crops'.
        """
        if self._everything_running >= self._everything_limit:
            raise OverloadedError(
                f"{self._everything_running} segment-everything job(s) already running on "
                "this replica",
                retry_after_s=5,
            )
        self._everything_running += 1
        prompts = len(crops) * params.points_per_side**2
        stop = threading.Event()
        try:
            async with self._slots:
                start = time.perf_counter()
                loop = asyncio.get_running_loop()
                with tracer.start_as_current_span("esam.decode") as span:
                    span.set_attributes({"esam.prompts": prompts, "esam.crops": len(crops)})
                    result = await loop.run_in_executor(
                        self._executor,
                        in_context(self._run_everything),
                        crops,
                        params,
                        mask_format,
                        stop,
                    )
                self._metrics.everything_duration.observe(time.perf_counter() - start)
                self._metrics.decoder_prompts.inc(prompts)
                return result
        finally:
            stop.set()  # a cancelled request stops its job at the next batch
            self._everything_running -= 1

    def _run_everything(
        self,
        crops: Sequence[tuple[Box, Embedding]],
        params: EverythingParams,
        mask_format: MaskFormat,
        stop: threading.Event,
    ) -> list[EverythingMask]:
        _, whole = crops[0]
        found = segment_everything(
            self._model,
            [Crop(box, torch.from_numpy(e.as_float32())) for box, e in crops],
            whole.width,
            whole.height,
            params,
            memory_budget_bytes=self._everything_memory,
            cancelled=stop.is_set,
        )
        with tracer.start_as_current_span("esam.masks.encode") as span:
            span.set_attribute("esam.mask_format", mask_format)
            return [EverythingMask(p, self._everything_mask(p, mask_format)) for p in found]

    @staticmethod
    def _everything_mask(proposal: Proposal, mask_format: MaskFormat) -> Any:
        if mask_format in ("png", "polygons", "array"):
            return _encode_mask(proposal.mask, proposal.rle, mask_format)
        return proposal.rle if mask_format == "rle" else None

    def _run(self, request: DecodeRequest) -> list[list[Candidate]]:
        embedding = torch.from_numpy(request.embedding.as_float32())
        with torch.inference_mode():
            logits, iou = self._model.decode(
                embedding,
                torch.from_numpy(request.points),
                torch.from_numpy(request.labels),
                multimask=request.multimask,
            )
            logits, iou = logits.cpu(), iou.cpu()
        with tracer.start_as_current_span("esam.masks.encode") as span:
            span.set_attribute("esam.mask_format", request.mask_format)
            return self._masks(request, logits, iou)

    def _masks(
        self, request: DecodeRequest, logits: torch.Tensor, iou: torch.Tensor
    ) -> list[list[Candidate]]:
        """Full-size masks of every candidate, encoded in the request's format."""
        results = []
        for prompt_logits, prompt_iou in zip(logits, iou, strict=True):
            order = torch.argsort(prompt_iou, descending=True, stable=True)
            masks = upsample_masks(
                prompt_logits[order], request.embedding.height, request.embedding.width
            ).numpy()
            candidates = []
            for rank, k in enumerate(order.tolist()):
                mask = masks[rank]
                rle = encode_rle(mask)
                area, bbox = rle_area_bbox(rle)
                candidates.append(
                    Candidate(
                        score=float(prompt_iou[k]),
                        area=area,
                        bbox=bbox,
                        mask=_encode_mask(mask, rle, request.mask_format),
                        logits=prompt_logits[k].numpy() if request.return_logits else None,
                    )
                )
            results.append(candidates)
        return results


def _encode_mask(mask: NDArray[np.bool_], rle: Any, mask_format: MaskFormat) -> Any:
    if mask_format == "rle":
        return rle
    if mask_format == "png":
        return base64.b64encode(encode_png(mask)).decode("ascii")
    if mask_format == "polygons":
        return mask_to_polygons(mask)
    if mask_format == "array":
        return mask
    return None
