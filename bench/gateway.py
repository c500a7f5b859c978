"""Gateway overhead: cache-hit /segment over HTTP against a direct in-process decoder call.

Starts the real service (``python -m service``, embedded mode) on a free
loopback port, then, alternately in the same run:

* **direct**: the gateway's own decode path (``service.core.decoders.LocalDecoder``:
  mask decoder + upsampling + RLE) called in this process on the same
  embedding, with the same concurrency limit;
* **http**: ``POST /segment`` with the image's ``image_id`` (a cache hit).

at concurrency 1 and 8, and reports p50/p99 and the ratio of p50s. Then cold
against warm ``POST /embed`` (new images against the same images again). Last,
tracing's overhead: two more gateways, OpenTelemetry off and on (OTLP exporter to
a port where nothing listens, batch processor), cache-hit ``/segment`` in turns.

    python bench/gateway.py                         # fixture checkpoint if present, else random
    python bench/gateway.py --requests 100 --concurrency 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from devtools.gateway_process import GatewayProcess
from devtools.redis_server import free_port
from service.core.decoders import DecodeRequest, LocalDecoder
from service.core.embedding import Embedding
from service.core.loading import load_serving_model
from service.core.metrics import Metrics
from service.model.preprocess import decode_image, resize_to_model
from service.model.prompts import Prompt, prompts_to_arrays

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
FIXTURE = FIXTURE / "efficientsam-ti-seed0"
PROMPT: dict[str, Any] = {"points": [[580, 350]], "labels": [1]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def synthetic_jpeg(seed: int, width: int = 1072, height: int = 603) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).resize((width, height))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def run_concurrent(
    call: Callable[[], Awaitable[None]], total: int, concurrency: int
) -> list[float]:
    latencies: list[float] = []
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            queue.pop()
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the fixture, else 'random'")
    parser.add_argument("--requests", type=int, default=60, help="per concurrency and round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decodes", type=int, default=2, help="ESAM_MAX_CONCURRENT_DECODES")
    parser.add_argument("--cold-images", type=int, default=4)
    parser.add_argument("--tracing-requests", type=int, default=200, help="per side and round")
    args = parser.parse_args()

    fixture_ckpt = FIXTURE / "efficient_sam_vitt_random_seed0.pt"
    checkpoint = args.checkpoint or (str(fixture_ckpt) if fixture_ckpt.exists() else "random")
    image = (
        (FIXTURE / "dogs.jpg").read_bytes()
        if (FIXTURE / "dogs.jpg").exists()
        else synthetic_jpeg(0)
    )

    # the direct path: the same model, the same embedding, the gateway's own decoder object
    torch.set_grad_enabled(False)
    loaded = load_serving_model(checkpoint, None, "cpu")
    rgb = decode_image(image)
    height, width = rgb.shape[:2]
    embedding = Embedding.from_array(
        loaded.model.embed(resize_to_model(rgb)[None]).numpy(), width, height, "float16"
    )
    points, labels = prompts_to_arrays(
        [Prompt(points=PROMPT["points"], labels=PROMPT["labels"])], width, height
    )
    decoder = LocalDecoder(loaded.model, max_concurrency=args.decodes, metrics=Metrics())
    request = DecodeRequest("bench", embedding, points, labels, "multimask", False)

    async def direct() -> None:
        await decoder.segment(request)

    server = GatewayProcess(
        {"ESAM_CHECKPOINT": checkpoint, "ESAM_MAX_CONCURRENT_DECODES": str(args.decodes)}
    )
    server.start()
    results: dict[tuple[str, int], list[float]] = {}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            image_id = (
                await client.post("/embed", content=image, headers={"Content-Type": "image/jpeg"})
            ).json()["image_id"]
            body = {"image_id": image_id, "prompts": [PROMPT], "mask_format": "rle"}

            async def http() -> None:
                response = await client.post("/segment", json=body)
                response.raise_for_status()

            for _ in range(5):  # warm-up both paths
                await direct()
                await http()
            for _ in range(args.rounds):
                for c in args.concurrency:
                    for name, call in (("direct", direct), ("http", http)):
                        latencies = await run_concurrent(call, args.requests, c)
                        results.setdefault((name, c), []).extend(latencies)

            cold: list[float] = []
            warm: list[float] = []
            for seed in range(1, args.cold_images + 1):
                data = synthetic_jpeg(seed)
                for sink in (cold, warm):
                    start = time.perf_counter()
                    response = await client.post(
                        "/embed", content=data, headers={"Content-Type": "image/jpeg"}
                    )
                    response.raise_for_status()
                    sink.append(time.perf_counter() - start)
    finally:
        server.stop()
        await decoder.close()

    print(
        f"# gateway benchmark: {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, model {loaded.model_id}, image {width}x{height}, "
        f"1 point prompt, multimask, rle; {args.requests} x {args.rounds} requests each"
    )
    for c in args.concurrency:
        d, h = results[("direct", c)], results[("http", c)]
        print(
            f"concurrency {c}: direct p50 {percentile(d, 50) * 1e3:.1f} ms "
            f"p99 {percentile(d, 99) * 1e3:.1f} ms | http p50 {percentile(h, 50) * 1e3:.1f} ms "
            f"p99 {percentile(h, 99) * 1e3:.1f} ms | http/direct p50 "
            f"{percentile(h, 50) / percentile(d, 50):.3f}x"
        )
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    print(
        f"/embed cold p50 {cold_s * 1e3:.0f} ms, warm (cache hit) p50 {warm_s * 1e3:.1f} ms, "
        f"cold/warm {cold_s / warm_s:.0f}x"
    )
    off, on = await tracing_overhead(checkpoint, image, args.tracing_requests, args.rounds)
    print(
        f"tracing: cache-hit /segment p50 off {percentile(off, 50) * 1e3:.1f} ms, on (OTLP to "
        f"nowhere, batch processor) {percentile(on, 50) * 1e3:.1f} ms: "
        f"{(percentile(on, 50) / percentile(off, 50) - 1) * 100:+.1f} %"
    )


async def tracing_overhead(
    checkpoint: str, image: bytes, requests: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Cache-hit /segment latencies of two gateways, tracing off and on, request by request."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: spans are exported to no one
    tracing = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": nowhere}
    servers = {
        traced: GatewayProcess({"ESAM_CHECKPOINT": checkpoint, **(tracing if traced else {})})
        for traced in (False, True)
    }
    latencies: dict[bool, list[float]] = {False: [], True: []}
    try:
        for server in servers.values():
            server.start()
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                traced: await stack.enter_async_context(
                    httpx.AsyncClient(base_url=server.url, timeout=300)
                )
                for traced, server in servers.items()
            }
            bodies = {}
            for traced, client in clients.items():
                embedded = await client.post(
                    "/embed", content=image, headers={"Content-Type": "image/jpeg"}
                )
                # no masks in the answer: the figure is the service's own overhead
                bodies[traced] = {
                    "image_id": embedded.json()["image_id"],
                    "prompts": [PROMPT],
                    "multimask": False,
                    "mask_format": "none",
                }
            for _ in range(rounds * requests):  # in turns, so drift hits both alike
                for traced, client in clients.items():
                    start = time.perf_counter()
                    response = await client.post("/segment", json=bodies[traced])
                    response.raise_for_status()
                    latencies[traced].append(time.perf_counter() - start)
    finally:
        for server in servers.values():
            server.stop()
    return latencies[False], latencies[True]


if __name__ == "__main__":
    asyncio.run(main())
