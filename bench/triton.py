"""Encoder throughput and latency against concurrency, directly against Triton and
through the gateway, with requests per model execution (dynamic batching).

Starts a local Triton on CPU (``service.devtools.triton``: the CPU config
derived from the production one) and, for the gateway rows, the real gateway (``python -m service`` with ``ESAM_ENCODER=triton``). Every
request carries a new image, so nothing is served from a cache.

    python bench/triton.py                                  # CPU, fixture checkpoint or random
    python bench/triton.py --concurrency 1 4 16 64 --requests 64
    python bench/triton.py --protocols                      # gRPC vs HTTP client overhead
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient
from PIL import Image

from service.devtools.gateway_process import GatewayProcess
from service.devtools.redis_server import free_port
from service.devtools.triton import LocalTriton
from service.devtools.triton_config import MODEL

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"


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


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (60, 107, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((1072, 603)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def row(path: str, c: int, n: int, wall: float, lat: list[float], execs: float) -> str:
    return (
        f"| {path} | {c} | {n} | {n / wall:.2f} | {np.percentile(lat, 50) * 1e3:.0f} | "
        f"{np.percentile(lat, 99) * 1e3:.0f} | {n / max(execs, 1):.2f} |"
    )


async def bench_direct(
    server: LocalTriton, levels: list[int], requests: int, dtype: str
) -> list[str]:
    rows = []
    np_dtype = {"FP32": np.float32, "FP16": np.float16}[dtype]
    pixels = [
        np.random.default_rng(i).random((1, 3, 1024, 1024), dtype=np.float32).astype(np_dtype)
        for i in range(8)
    ]
    async with grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://")) as client:

        async def call(index: int) -> None:
            tensor = grpcclient.InferInput("pixels", [1, 3, 1024, 1024], dtype)
            tensor.set_data_from_numpy(pixels[index % len(pixels)])
            await client.infer(MODEL, [tensor])

        await call(0)
        for c in levels:
            n = max(requests, c)
            before = server.counter("nv_inference_exec_count")
            wall, lat = await drive(call, n, c)
            rows.append(
                row(
                    "Triton direct (gRPC)",
                    c,
                    n,
                    wall,
                    lat,
                    server.counter("nv_inference_exec_count") - before,
                )
            )
    return rows


async def bench_gateway(
    server: LocalTriton, levels: list[int], requests: int, checkpoint: str
) -> list[str]:
    gateway = GatewayProcess(
        {
            "ESAM_CHECKPOINT": checkpoint,
            "ESAM_ENCODER": "triton",
            "ESAM_TRITON_URL": server.grpc_url,
            "ESAM_MAX_PENDING_ENCODES": "1024",
            "ESAM_ENCODE_TIMEOUT_S": "600",
        }
    )
    gateway.start()
    rows = []
    seed = iter(range(10_000, 1_000_000))
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=900) as client:
            for c in levels:
                n = max(requests, c)
                images = [jpeg(next(seed)) for _ in range(n)]

                async def call(index: int, images: list[bytes] = images) -> None:
                    r = await client.post(
                        "/embed", content=images[index], headers={"Content-Type": "image/jpeg"}
                    )
                    r.raise_for_status()

                before = server.counter("nv_inference_exec_count")
                wall, lat = await drive(call, n, c)
                rows.append(
                    row(
                        "gateway /embed → Triton",
                        c,
                        n,
                        wall,
                        lat,
                        server.counter("nv_inference_exec_count") - before,
                    )
                )
    finally:
        gateway.stop()
    return rows


async def bench_protocols(server: LocalTriton, repeats: int) -> list[str]:
    """Client round trip minus Triton's own request time: the transport's cost per image."""
    pixels = np.random.default_rng(0).random((1, 3, 1024, 1024), dtype=np.float32)
    rows = []
    for name, module, url in (
        ("gRPC", grpcclient, server.grpc_url),
        ("HTTP", httpclient, server.http_url),
    ):
        client = module.InferenceServerClient(url.split("://")[1])
        overheads = []
        try:
            for _ in range(repeats):
                tensor = module.InferInput("pixels", [1, 3, 1024, 1024], "FP32")
                if module is httpclient:
                    tensor.set_data_from_numpy(pixels, binary_data=True)
                else:
                    tensor.set_data_from_numpy(pixels)
                before = server.counter("nv_inference_request_duration_us")
                start = time.perf_counter()
                await client.infer(MODEL, [tensor])
                total = time.perf_counter() - start
                server_s = (server.counter("nv_inference_request_duration_us") - before) / 1e6
                overheads.append(total - server_s)
        finally:
            await client.close()
        rows.append(
            f"| {name} | {np.median(overheads) * 1e3:.1f} ms | FP32, 12 MiB in, 4 MiB out |"
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", default=str(CHECKPOINT) if CHECKPOINT.exists() else "random"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--requests", type=int, default=16, help="per level (at least the concurrency)"
    )
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument("--protocols", action="store_true", help="also compare gRPC and HTTP")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        server = LocalTriton(
            Path(workdir),
            args.checkpoint,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            max_batch=args.max_batch,
            queue_delay_us=5000,
            log_path=Path(workdir) / "triton.log",
        )
        server.start()
        try:
            print(
                f"# {platform.machine()}, {os.cpu_count()} cores; local Triton 2.51 on CPU "
                f"(python backend, fp32 wire, max_batch {args.max_batch}); "
                f"checkpoint {Path(args.checkpoint).name}"
            )
            print(
                "| path | concurrency | requests | images/s | p50 ms | p99 ms "
                "| requests per execution |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for line in await bench_direct(server, args.concurrency, args.requests, "FP32"):
                print(line, flush=True)
            if not args.skip_gateway:
                for line in await bench_gateway(
                    server, args.concurrency, args.requests, args.checkpoint
                ):
                    print(line, flush=True)
            if args.protocols:
                print(
                    "\n| protocol | client overhead per request (p50) | payload |\n"
                    "| --- | --- | --- |"
                )
                for line in await bench_protocols(server, 8):
                    print(line)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
