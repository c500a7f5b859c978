"""What each embedding dtype (``ESAM_EMBEDDING_DTYPE``) costs and keeps, in one run.

For ``float32``, ``float16`` and ``int8`` (symmetric, one scale per channel):

* **Redis memory per embedding**: the record ``SET`` into a real Redis, then
  ``MEMORY USAGE`` of its key and ``used_memory``'s growth per key over ``--keys`` keys
  (what the allocator really hands out: jemalloc's size classes);
* **mask fidelity against float32**: the masks of every candidate of every prompt, the
  embedding kept in each dtype against the float32 embedding's (IoU min/mean, largest
  predicted-IoU difference), on the shared fixture (its checkpoint, image and prompts)
  and on random Ti and S weights with 1080p photo-like images and random prompts;
* **click latency** of the gateway's in-process decoder (``LocalDecoder``, one point,
  multimask, COCO RLE at 1920×1080) with each record, interleaved, median and ratio to
  float16 (the default before int8);
* the one-time cost of making the record from an encoder's output (quantisation).

    python bench/embedding_dtypes.py                       # Redis at 127.0.0.1:6379
    python bench/embedding_dtypes.py --redis-url redis://host:6379/0 --clicks 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from devtools.benchmarking import photo_jpeg
from service.core.decoders import DecodeRequest, LocalDecoder
from service.core.embedding import EMBEDDING_DTYPES, Embedding, EmbeddingDtype
from service.core.metrics import Metrics
from service.model import EfficientSam, load_named, random_model
from service.model.masks import upsample_masks
from service.model.preprocess import decode_image, resize_to_model
from service.model.prompts import Prompt, prompts_to_arrays

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
FIXTURE = FIXTURE / "efficientsam-ti-seed0"
MiB = 1 << 20


def embed(model: EfficientSam, image: bytes) -> tuple[np.ndarray, int, int]:
    rgb = decode_image(image)
    with torch.inference_mode():
        array = model.embed(resize_to_model(rgb)[None]).numpy()
    return array, rgb.shape[1], rgb.shape[0]


def masks_of(
    model: EfficientSam, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray, size: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate's full-size mask ``[N, 3, H, W]`` and predicted IoU, token order."""
    with torch.inference_mode():
        logits, iou = model.decode(
            torch.from_numpy(embedding), torch.from_numpy(points), torch.from_numpy(labels)
        )
        height, width = size
        return upsample_masks(logits, height, width).numpy(), iou.numpy()


def iou_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-mask IoU over the last two axes (two empty masks agree: 1)."""
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def fidelity(
    name: str, model: EfficientSam, image: bytes, prompts: list[Prompt]
) -> dict[EmbeddingDtype, dict[str, float]]:
    array, width, height = embed(model, image)
    points, labels = prompts_to_arrays(prompts, width, height)
    want, want_iou = masks_of(model, array, points, labels, (height, width))
    found: dict[EmbeddingDtype, dict[str, float]] = {}
    for dtype in EMBEDDING_DTYPES:
        record = Embedding.from_array(array, width, height, dtype)
        got, got_iou = masks_of(model, record.as_float32(), points, labels, (height, width))
        ious = iou_of(got, want)
        found[dtype] = {
            "min": float(ious.min()),
            "mean": float(ious.mean()),
            "score": float(np.abs(got_iou - want_iou).max()),
        }
        print(
            f"  {name:<32} {dtype:<8} mask IoU vs float32 min {ious.min():.4f} "
            f"mean {ious.mean():.4f}  |Δ predicted IoU| max {found[dtype]['score']:.1e} "
            f"({ious.size} masks)",
            flush=True,
        )
    return found


def fixture_prompts() -> list[Prompt]:
    """The fixture's queries as prompts (leading corners labelled 2, 3 are a box)."""
    prompts = []
    for query in json.loads((FIXTURE / "queries.json").read_text()):
        points, labels = query["points"], query["labels"]
        if labels[:2] == [2, 3]:
            box = [*points[0], *points[1]]
            prompts.append(Prompt(points=points[2:], labels=labels[2:], box=box))
        else:
            prompts.append(Prompt(points=points, labels=labels))
    return prompts


def random_prompts(rng: np.random.Generator, width: int, height: int, n: int) -> list[Prompt]:
    prompts = []
    for _ in range(n):
        x, y = float(rng.uniform(0, width - 1)), float(rng.uniform(0, height - 1))
        if rng.random() < 0.25:
            w, h = float(rng.uniform(20, width / 3)), float(rng.uniform(20, height / 3))
            box = [x, y, min(width - 1, x + w), min(height - 1, y + h)]
            prompts.append(Prompt(points=[], labels=[], box=box))
        else:
            prompts.append(Prompt(points=[[x, y]], labels=[1]))
    return prompts


def redis_memory(url: str, keys: int) -> dict[EmbeddingDtype, dict[str, float]]:
    client = redis.Redis.from_url(url)
    array = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    prefix = f"bench-dtypes-{uuid.uuid4().hex[:8]}"
    found: dict[EmbeddingDtype, dict[str, float]] = {}
    for dtype in EMBEDDING_DTYPES:
        record = Embedding.from_array(array, 1920, 1080, dtype).to_bytes()
        names = [f"{prefix}:{dtype}:{i}" for i in range(keys)]
        before = int(client.info("memory")["used_memory"])
        for name in names:
            client.set(name, record)
        after = int(client.info("memory")["used_memory"])
        usage = int(client.memory_usage(names[0], samples=0) or 0)
        client.delete(*names)
        found[dtype] = {
            "record": len(record),
            "memory_usage": usage,
            "used_per_key": (after - before) / keys,
        }
        print(
            f"  {dtype:<8} record {len(record):>9,} B   MEMORY USAGE {usage:>9,} B "
            f"({usage / MiB:.3f} MiB)   used_memory per key {(after - before) / keys:>11,.0f} B",
            flush=True,
        )
    return found


async def click_latency(
    model: EfficientSam, clicks: int, decodes: int
) -> dict[EmbeddingDtype, float]:
    array, width, height = embed(model, photo_jpeg(7))
    points, labels = prompts_to_arrays([Prompt(points=[[960.0, 540.0]], labels=[1])], width, height)
    decoder = LocalDecoder(model, max_concurrency=decodes, metrics=Metrics())
    requests = {
        dtype: DecodeRequest(
            "bench",
            Embedding.from_array(array, width, height, dtype),
            points,
            labels,
            "multimask",
            False,
        )
        for dtype in EMBEDDING_DTYPES
    }
    times: dict[EmbeddingDtype, list[float]] = {dtype: [] for dtype in EMBEDDING_DTYPES}
    for dtype in EMBEDDING_DTYPES:  # warm-up
        await decoder.segment(requests[dtype])
    for _ in range(clicks):  # interleaved: every dtype sees the same machine
        for dtype in EMBEDDING_DTYPES:
            start = time.perf_counter()
            await decoder.segment(requests[dtype])
            times[dtype].append(time.perf_counter() - start)
    await decoder.close()
    return {dtype: statistics.median(values) for dtype, values in times.items()}


def record_cost(repeats: int) -> dict[EmbeddingDtype, float]:
    array = np.random.default_rng(3).standard_normal((1, 256, 64, 64)).astype(np.float32)
    found: dict[EmbeddingDtype, float] = {}
    for dtype in EMBEDDING_DTYPES:
        start = time.perf_counter()
        for _ in range(repeats):
            Embedding.from_array(array, 1920, 1080, dtype)
        made = (time.perf_counter() - start) / repeats
        record = Embedding.from_array(array, 1920, 1080, dtype)
        start = time.perf_counter()
        for _ in range(repeats):
            record.as_float32()
        read = (time.perf_counter() - start) / repeats
        found[dtype] = made
        print(
            f"  {dtype:<8} record from the encoder's float32 {made * 1e3:6.2f} ms (once per "
            f"image)   decoder input {read * 1e3:5.2f} ms (per click)",
            flush=True,
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--keys", type=int, default=200, help="records per dtype in Redis")
    parser.add_argument("--clicks", type=int, default=30, help="clicks per dtype")
    parser.add_argument("--decodes", type=int, default=1, help="decoder threads")
    parser.add_argument("--prompts", type=int, default=16, help="random prompts per image")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(
        "command: python bench/embedding_dtypes.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    )

    print("\nRedis memory per embedding (a real Redis):")
    redis_memory(args.redis_url, args.keys)

    print("\nMask fidelity against the float32 embedding:")
    checkpoint = FIXTURE / "efficient_sam_vitt_random_seed0.pt"
    fixture_model = load_named(str(checkpoint), "ti").eval()
    fidelity(
        "fixture (Ti seed 0, dogs.jpg)",
        fixture_model,
        (FIXTURE / "dogs.jpg").read_bytes(),
        fixture_prompts(),
    )
    rng = np.random.default_rng(5)
    for variant, seed in (("ti", 11), ("s", 12)):
        model = random_model(variant, seed=seed).eval()  # type: ignore[arg-type]
        fidelity(
            f"random {variant} seed {seed}, 1080p photo",
            model,
            photo_jpeg(seed),
            random_prompts(rng, 1920, 1080, args.prompts),
        )

    print("\nMaking the record and the decoder's input (1 thread):")
    record_cost(20)

    print(f"\nClick latency, in-process decoder, 1920x1080, {args.clicks} clicks per dtype:")
    medians = asyncio.run(click_latency(fixture_model, args.clicks, args.decodes))
    for dtype, median in medians.items():
        print(
            f"  {dtype:<8} p50 {median * 1e3:7.1f} ms   ratio to float16 "
            f"{median / medians['float16']:.3f}"
        )


if __name__ == "__main__":
    main()
