"""Shared pieces of the benchmarks in ``bench/``: load driving, test images, timing.

Dev-only tooling (never imported by the service): the baseline attention of the
reference, the encoder timing loop, a concurrency driver, photo-like JPEGs and
the ``BYTES`` input the gateway sends to Triton.
"""

from __future__ import annotations

import asyncio
import io
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from devtools.peak_memory import photo_like
from service.model import EfficientSam, Precision, random_model
from service.model._layers import AttentionBase


def explicit_softmax_attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The reference's formulation: materialise the full attention matrix."""
    attn = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return attn.softmax(dim=-1) @ v


def as_baseline(model: EfficientSam) -> EfficientSam:
    """The same weights with the reference's explicit-softmax attention."""
    baseline = random_model(model.config.variant)
    baseline.load_state_dict(model.state_dict())
    for module in baseline.modules():
        if isinstance(module, AttentionBase):
            module.attend = explicit_softmax_attend
    return baseline.to(model.device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_encoder(model: EfficientSam, precision: Precision, batch: int, repeats: int) -> float:
    """Median seconds of one encoder call on ``batch`` images (after one warm-up call)."""
    pixels = torch.rand(batch, 3, 1024, 1024, device=model.device)
    model.embed(pixels, precision)
    times = []
    for _ in range(repeats):
        sync(model.device)
        start = time.perf_counter()
        model.embed(pixels, precision)
        sync(model.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def drive(
    call: Callable[[int], Awaitable[None]], total: int, concurrency: int
) -> tuple[float, list[float]]:
    """Run ``total`` calls with ``concurrency`` workers; return wall time and latencies."""
    latencies: list[float] = []
    todo = list(range(total))

    async def worker() -> None:
        while todo:
            index = todo.pop()
            start = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def photo_jpeg(seed: int, size: tuple[int, int] = (1920, 1080)) -> bytes:
    """A photo-like JPEG (1080p by default), different for every seed."""
    buffer = io.BytesIO()
    photo_like(*size, seed=seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def bytes_input(data: bytes) -> Any:
    """The gRPC input of the ``efficientsam`` ensemble: one image file, as bytes."""
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


def cpu_seconds(pid: int) -> float:
    """The process's CPU time, all threads, in nanosecond resolution (the scheduler's
    run time; ``/proc/<pid>/stat`` counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9
