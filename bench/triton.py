"""Encoder throughput and latency against concurrency, directly against Triton and
through the gateway, with requests per model execution (dynamic batching).

Starts a local Triton on CPU (``devtools.triton``: the CPU configs derived
from the production ones) and, for the gateway rows, the real gateway (``python -m
service`` with ``ESAM_ENCODER=triton``). Every request carries a new 1080p JPEG, so
nothing is served from a cache. In one run:

* Triton direct, **before**: the client decodes and resizes, and sends the FP32
  ``[3, 1024, 1024]`` tensor to ``efficientsam_encoder`` (what the gateway did);
* Triton direct, **after**: the client sends the JPEG's bytes to the ``efficientsam``
  ensemble (preprocessing beside the encoder);
* bytes per request on the wire for both (the gRPC request's protobuf size);
* the gateway's CPU time per cold ``/embed`` (new image) against a warm one (cache hit),
  with the embedding in Triton's answer and in shared memory (Triton on this host),
  against a second Triton whose encoder is a stand-in that answers at once (the real
  preprocessing before it), so that a cold request takes about as long as on a GPU.

    python bench/triton.py                                  # CPU, fixture checkpoint or random
    python bench/triton.py --concurrency 1 4 16 --requests 16
    python bench/triton.py --protocols                      # gRPC vs HTTP client overhead
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc.aio as grpcclient
import tritonclient.http.aio as httpclient

from devtools.benchmarking import bytes_input, cpu_seconds, drive, photo_jpeg
from devtools.gateway_process import GatewayProcess
from devtools.redis_server import free_port
from devtools.triton import LocalTriton, grpc_request_of
from devtools.triton_config import ENSEMBLE, MODEL
from service.model.preprocess import load_for_model

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"


def pixels_input(data: bytes) -> grpcclient.InferInput:
    """What the gateway sent before: decoded and resized here, FP32 on the wire."""
    tensor = grpcclient.InferInput("pixels", [1, 3, 1024, 1024], "FP32")
    tensor.set_data_from_numpy(load_for_model(data)[None].numpy())
    return tensor


def wire_bytes(data: bytes) -> list[str]:
    rows = []
    for label, model, make in (
        ("before: FP32 tensor to efficientsam_encoder", MODEL, pixels_input),
        ("after: the JPEG to the efficientsam ensemble", ENSEMBLE, bytes_input),
    ):
        size = grpc_request_of(make(data), [], model).ByteSize()
        rows.append(f"| {label} | {size:,} | {size - len(data):+,} |")
    return rows


def row(path: str, c: int, n: int, wall: float, lat: list[float], execs: float) -> str:
    return (
        f"| {path} | {c} | {n} | {n / wall:.2f} | {np.percentile(lat, 50) * 1e3:.0f} | "
        f"{np.percentile(lat, 99) * 1e3:.0f} | {n / max(execs, 1):.2f} |"
    )


async def bench_direct(
    server: LocalTriton, levels: list[int], requests: int, path: str
) -> list[str]:
    """``path``: "pixels" (before) or "bytes" (after)."""
    rows = []
    seed = iter(range(20_000, 1_000_000))
    model, make = (MODEL, pixels_input) if path == "pixels" else (ENSEMBLE, bytes_input)
    async with grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://")) as client:
        for c in levels:
            n = max(requests, c)
            images = [photo_jpeg(next(seed)) for _ in range(n + 1)]

            async def call(index: int, images: list[bytes] = images) -> None:
                # "before" includes the client's decode + resize: the gateway's work then
                tensor = await asyncio.to_thread(make, images[index])
                await client.infer(model, [tensor])

            await call(n)  # warm-up
            before = server.counter("nv_inference_exec_count")
            wall, lat = await drive(call, n, c)
            label = (
                "before: client decodes, FP32 tensor → encoder"
                if path == "pixels"
                else "after: JPEG bytes → ensemble"
            )
            rows.append(
                row(label, c, n, wall, lat, server.counter("nv_inference_exec_count") - before)
            )
    return rows


async def gateway_cpu(
    server: LocalTriton, checkpoint: str, images: int, shared_memory: bool = False
) -> list[str]:
    """The gateway process's CPU time per cold /embed (new 1080p JPEG) and per warm one;
    with ``shared_memory``, Triton writes the embeddings into the gateway's memory
    (``ESAM_TRITON_SHARED_MEMORY=system``) instead of its answers.

    While a cold request waits for Triton, the idle process still spends CPU on its timers
    (uvicorn's 10 Hz tick, gRPC's event engine), measured in the same run with nothing in
    flight; the net figure takes that time-proportional share out, the raw one keeps it
    (they differ little with the stand-in encoder, a lot with the CPU encoder's 1.5 s)."""
    gateway = GatewayProcess(
        {
            "ESAM_CHECKPOINT": checkpoint,
            "ESAM_ENCODER": "triton",
            "ESAM_TRITON_URL": server.grpc_url,
            "ESAM_ENCODE_TIMEOUT_S": "600",
            "ESAM_TRITON_SHARED_MEMORY": "system" if shared_memory else "none",
        }
    )
    gateway.start()
    data = [photo_jpeg(900_000 + i) for i in range(images)]  # new to this gateway process
    warm_rounds = 10  # a warm request costs ~1 ms: more of them for the same precision
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=900) as client:

            async def embed(image: bytes) -> tuple[float, float]:
                """(CPU seconds, wall seconds) of one request."""
                start, wall = cpu_seconds(gateway.pid), time.perf_counter()
                r = await client.post(
                    "/embed", content=image, headers={"Content-Type": "image/jpeg"}
                )
                r.raise_for_status()
                return cpu_seconds(gateway.pid) - start, time.perf_counter() - wall

            await client.post(
                "/embed", content=photo_jpeg(1), headers={"Content-Type": "image/jpeg"}
            )
            start, wall = cpu_seconds(gateway.pid), time.perf_counter()
            await asyncio.sleep(20)
            idle = (cpu_seconds(gateway.pid) - start) / (time.perf_counter() - wall)
            # interleaved, so that both kinds see the same machine (a shared one drifts):
            # each new image, then ten warm requests for images already sent
            colds, warms = [], []
            for i, image in enumerate(data):
                colds.append(await embed(image))
                for k in range(warm_rounds):
                    warms.append(await embed(data[(i + k) % (i + 1)]))
            cold, cold_wall = (sum(x) / len(colds) for x in zip(*colds, strict=True))
            warm, warm_wall = (sum(x) / len(warms) for x in zip(*warms, strict=True))
    finally:
        gateway.stop()
    cold_net, warm_net = cold - idle * cold_wall, warm - idle * warm_wall
    how = "shared memory" if shared_memory else "in the answer"
    return [
        f"| embedding {how}: idle gateway (nothing in flight) | {idle * 1e3:.2f} ms per second |",
        f"| embedding {how}: cold /embed (new image, encoded in Triton; {cold_wall:.1f} s each) "
        f"| {cold * 1e3:.1f} raw, {cold_net * 1e3:.1f} net of idle |",
        f"| embedding {how}: warm /embed (cache hit) "
        f"| {warm * 1e3:.2f} raw, {warm_net * 1e3:.2f} net |",
        f"| embedding {how}: ratio cold / warm "
        f"| {cold / warm:.2f}× raw, **{cold_net / warm_net:.2f}× net** |",
    ]


async def stand_in_gateway_cpu(
    workdir: Path, checkpoint: str, images: int, max_batch: int
) -> list[str]:
    """:func:`gateway_cpu` against a Triton whose encoder answers zeros at once (the real
    preprocessing before it): a cold request then takes about as long as on a GPU, and the
    idle gateway's timers no longer outweigh the request's own CPU."""
    workdir.mkdir()
    server = LocalTriton(
        workdir,
        checkpoint,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        max_batch=max_batch,
        output="fp16",
        stand_in_encoder=True,
        log_path=workdir / "triton.log",
    )
    server.start()
    try:
        rows = []
        for shared_memory in (False, True):
            rows += await gateway_cpu(server, checkpoint, images, shared_memory)
        return rows
    finally:
        server.stop()


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
                images = [photo_jpeg(next(seed)) for _ in range(n)]

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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--requests", type=int, default=16, help="per level (at least the concurrency)"
    )
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--skip-gateway", action="store_true")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="only the bytes and CPU figures"
    )
    parser.add_argument("--cpu-images", type=int, default=40, help="images for the CPU figure")
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
            output="fp16",  # the production output: what the gateway receives and caches
            log_path=Path(workdir) / "triton.log",
        )
        server.start()
        try:
            print(
                f"# {platform.machine()}, {os.cpu_count()} cores; local Triton 2.51 on CPU "
                f"(python backend, fp32 between preprocessing and encoder, fp16 out, "
                f"max_batch {args.max_batch}); "
                f"checkpoint {Path(args.checkpoint).name}"
            )
            print(
                "| path | concurrency | requests | images/s | p50 ms | p99 ms "
                "| requests per execution |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for path in ("pixels", "bytes") if not args.skip_throughput else ():
                for line in await bench_direct(server, args.concurrency, args.requests, path):
                    print(line, flush=True)
            if not args.skip_gateway and not args.skip_throughput:
                for line in await bench_gateway(
                    server, args.concurrency, args.requests, args.checkpoint
                ):
                    print(line, flush=True)
            sample = photo_jpeg(7)
            print(
                f"\n| bytes to Triton per 1080p JPEG ({len(sample):,} B) | request | over the file |"
            )
            print("| --- | --- | --- |")
            for line in wire_bytes(sample):
                print(line)
            if not args.skip_gateway:
                print(
                    "\n| gateway CPU per request (Triton's encoder: the stand-in) | ms |"
                    "\n| --- | --- |"
                )
                for line in await stand_in_gateway_cpu(
                    Path(workdir) / "stand-in", args.checkpoint, args.cpu_images, args.max_batch
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
