"""Gateway CPU per click: the in-process decoder against the Triton decoder, in one run.

Starts a local Triton on CPU with the encoder and ``efficientsam_decoder`` (their CPU
configs derived from the production ones) and two real gateways (``python -m service``,
``ESAM_ENCODER=triton``), one with ``ESAM_DECODER=local`` and one with ``=triton``.
Each gets the same new 1080p JPEG; then, interleaved so that both see the same machine,
clicks of one foreground point, multimask, COCO RLE. Reported:

* the gateway process's CPU time per click (all threads, the scheduler's nanosecond run
  time), raw and net of the idle process's timer CPU measured in the same run;
* click latency p50/p99 on both paths (here Triton runs on the same 2 CPU cores: the
  Triton path's latency on this machine says nothing about a GPU's);
* bytes of input tensors sent to Triton per click of a resident image
  (``esam_decoder_sent_bytes_total``), and the embedding sends;
* ``best_only`` against multimask on the local decoder (CPU per click);
* requests per decoder execution with ``--concurrency`` annotators clicking their own
  images at once (Triton's ``nv_inference_count`` / ``nv_inference_exec_count``);
* the Triton path's gateway CPU per click against a stand-in decoder that answers three
  discs at once (``devtools/stand_in_decoder.py``): the fixture's random weights
  make every mask a 250,000-run speckle (0.75 MB of RLE per click), a real object's mask
  has hundreds of runs, and the gateway's remaining work per click is per run.

    python bench/clicks.py                         # fixture checkpoint (or random weights)
    python bench/clicks.py --clicks 40 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from devtools.benchmarking import cpu_seconds, photo_jpeg
from devtools.gateway_process import GatewayProcess
from devtools.prometheus import sample_sum
from devtools.redis_server import free_port
from devtools.triton import LocalTriton
from devtools.triton_config import DECODER

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
JPEG = {"Content-Type": "image/jpeg"}


class Route:
    """One gateway, its client and its image."""

    def __init__(self, name: str, gateway: GatewayProcess, client: httpx.AsyncClient) -> None:
        self.name = name
        self.gateway = gateway
        self.client = client
        self.image_id = ""
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.idle_per_s = 0.0

    async def upload(self, image: bytes) -> str:
        response = await self.client.post("/embed", content=image, headers=JPEG)
        response.raise_for_status()
        image_id: str = response.json()["image_id"]
        return image_id

    async def click(self, image_id: str, index: int, **options: Any) -> None:
        body = {
            "image_id": image_id,
            # a different point every click: nothing is the same twice
            "prompts": [
                {"points": [[200 + (index * 37) % 1500, 150 + (index * 53) % 800]], "labels": [1]}
            ],
            "multimask": True,
            "mask_format": "rle",
            **options,
        }
        response = await self.client.post("/segment", json=body)
        response.raise_for_status()

    async def measured_click(self, index: int, **options: Any) -> None:
        start, wall = cpu_seconds(self.gateway.pid), time.perf_counter()
        await self.click(self.image_id, index, **options)
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(cpu_seconds(self.gateway.pid) - start)

    async def measure_idle(self, seconds: float) -> None:
        start, wall = cpu_seconds(self.gateway.pid), time.perf_counter()
        await asyncio.sleep(seconds)
        self.idle_per_s = (cpu_seconds(self.gateway.pid) - start) / (time.perf_counter() - wall)

    def metric(self, name: str) -> float:
        return sample_sum(httpx.get(f"{self.gateway.url}/metrics").text, name)

    def cpu_ms(self) -> tuple[float, float]:
        raw = statistics.mean(self.cpu)
        net = raw - self.idle_per_s * statistics.mean(self.wall)
        return raw * 1e3, net * 1e3

    def latency_ms(self) -> tuple[float, float]:
        ordered = sorted(self.wall)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return statistics.median(ordered) * 1e3, p99 * 1e3


def gateway(server: LocalTriton, checkpoint: str, decoder: str) -> GatewayProcess:
    return GatewayProcess(
        {
            "ESAM_CHECKPOINT": checkpoint,
            "ESAM_ENCODER": "triton",
            "ESAM_DECODER": decoder,
            "ESAM_TRITON_URL": server.grpc_url,
            "ESAM_ENCODE_TIMEOUT_S": "600",
            "ESAM_DECODE_TIMEOUT_S": "600",
            "ESAM_MAX_CONCURRENT_DECODES": "1",  # one decoder thread: a core, as measured
            "ESAM_MAX_PENDING_ENCODES": "256",
        }
    )


async def run(args: argparse.Namespace, server: LocalTriton, checkpoint: str) -> list[str]:
    local_gw, triton_gw = (
        gateway(server, checkpoint, "local"),
        gateway(server, checkpoint, "triton"),
    )
    local_gw.start()
    triton_gw.start()
    try:
        async with (
            httpx.AsyncClient(base_url=local_gw.url, timeout=900) as local_client,
            httpx.AsyncClient(base_url=triton_gw.url, timeout=900) as triton_client,
        ):
            local = Route("ESAM_DECODER=local", local_gw, local_client)
            remote = Route("ESAM_DECODER=triton", triton_gw, triton_client)
            image = photo_jpeg(424_242)
            for path in (local, remote):
                path.image_id = await path.upload(image)
                await path.click(path.image_id, -1)  # warm-up (and resident in Triton)
            sends_before = remote.metric("esam_decoder_embedding_sends_total")
            bytes_before = remote.metric("esam_decoder_sent_bytes_total")
            for path in (local, remote):
                await path.measure_idle(args.idle_s)
            for i in range(args.clicks):  # interleaved: the same machine for both
                await local.measured_click(i)
                await remote.measured_click(i)
            sent = (remote.metric("esam_decoder_sent_bytes_total") - bytes_before) / args.clicks
            sends = remote.metric("esam_decoder_embedding_sends_total") - sends_before

            best = Route("ESAM_DECODER=local, best_only", local_gw, local_client)
            best.image_id, best.idle_per_s = local.image_id, local.idle_per_s
            multi = Route("ESAM_DECODER=local, multimask", local_gw, local_client)
            multi.image_id, multi.idle_per_s = local.image_id, local.idle_per_s
            for i in range(args.clicks // 2):
                await best.measured_click(1000 + i, best_only=True)
                await multi.measured_click(1000 + i)

            # requests per decoder execution: `concurrency` annotators, one image each
            images = [photo_jpeg(500_000 + i) for i in range(args.concurrency)]
            ids = await asyncio.gather(*(remote.upload(i) for i in images))
            await asyncio.gather(*(remote.click(i, 0) for i in ids))  # resident
            requests = server.counter("nv_inference_count", DECODER)
            executions = server.counter("nv_inference_exec_count", DECODER)
            wall = time.perf_counter()
            await asyncio.gather(*(remote.click(i, k) for i in ids for k in range(args.rounds)))
            wall = time.perf_counter() - wall
            requests = server.counter("nv_inference_count", DECODER) - requests
            executions = server.counter("nv_inference_exec_count", DECODER) - executions
    finally:
        local_gw.stop()
        triton_gw.stop()

    (l_raw, l_net), (t_raw, t_net) = local.cpu_ms(), remote.cpu_ms()
    (l50, l99), (t50, t99) = local.latency_ms(), remote.latency_ms()
    (b_raw, b_net), (m_raw, m_net) = best.cpu_ms(), multi.cpu_ms()
    return [
        "| what | ESAM_DECODER=local | ESAM_DECODER=triton |",
        "| --- | --- | --- |",
        f"| gateway CPU per click, ms (raw / net of idle) | {l_raw:.1f} / {l_net:.1f} "
        f"| {t_raw:.2f} / {t_net:.2f} |",
        f"| ratio local / triton (net) | | **{l_net / t_net:.1f}×** |",
        f"| click latency p50 / p99, ms | {l50:.0f} / {l99:.0f} | {t50:.0f} / {t99:.0f} |",
        f"| idle gateway CPU, ms per second | {local.idle_per_s * 1e3:.2f} "
        f"| {remote.idle_per_s * 1e3:.2f} |",
        f"| bytes sent to Triton per click (resident image) | 0 | {sent:.0f} |",
        f"| embeddings sent during the {args.clicks} measured clicks | | {sends:.0f} |",
        "",
        "| local decoder | gateway CPU per click, ms (raw / net) |",
        "| --- | --- |",
        f"| multimask (3 candidates upsampled, RLE) | {m_raw:.1f} / {m_net:.1f} |",
        f"| best_only (1 candidate) | {b_raw:.1f} / {b_net:.1f} ({m_net / b_net:.2f}× less) |",
        "",
        f"Concurrency {args.concurrency} (one image per annotator, {args.rounds} clicks each, "
        f"Triton decoder): {requests:.0f} requests in {executions:.0f} executions = "
        f"**{requests / max(executions, 1):.2f} requests per execution**, "
        f"{requests / wall:.1f} clicks/s on this CPU.",
    ]


async def stand_in(args: argparse.Namespace, server: LocalTriton, checkpoint: str) -> list[str]:
    """The Triton path's gateway CPU per click when masks are compact (a stand-in decoder
    answering discs at once: a real object's mask has hundreds of runs, not 250,000)."""
    gw = gateway(server, checkpoint, "triton")
    gw.start()
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=900) as client:
            route = Route("ESAM_DECODER=triton, stand-in decoder", gw, client)
            route.image_id = await route.upload(photo_jpeg(424_242))
            await route.click(route.image_id, -1)
            await route.measure_idle(args.idle_s)
            for i in range(args.clicks):
                await route.measured_click(i)
    finally:
        gw.stop()
    raw, net = route.cpu_ms()
    p50, p99 = route.latency_ms()
    return [
        f"| gateway CPU per click with compact masks (stand-in decoder: three discs), ms "
        f"(raw / net) | {raw:.2f} / {net:.2f} |",
        f"| click latency p50 / p99 there, ms | {p50:.0f} / {p99:.0f} |",
    ]


def local_triton(workdir: Path, checkpoint: str, **options: Any) -> LocalTriton:
    """A local Triton on free ports with the FP16 encoder and the decoder."""
    workdir.mkdir(parents=True)
    return LocalTriton(
        workdir,
        checkpoint,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        output="fp16",
        decoder=True,
        log_path=workdir / "triton.log",
        **options,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="clicks per annotator at once")
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--max-batch", type=int, default=16, help="decoder requests/execution")
    args = parser.parse_args()
    checkpoint = str(CHECKPOINT) if CHECKPOINT.is_file() else "random"
    with tempfile.TemporaryDirectory() as workdir:
        server = local_triton(Path(workdir) / "real", checkpoint, decoder_max_batch=args.max_batch)
        server.start()
        try:
            rows = asyncio.run(run(args, server, checkpoint))
        finally:
            server.stop()
        standin = local_triton(Path(workdir) / "stand-in", checkpoint, stand_in_decoder=True)
        standin.start()
        try:
            rows += ["", "| the Triton path with compact masks | |", "| --- | --- |"]
            rows += asyncio.run(stand_in(args, standin, checkpoint))
        finally:
            standin.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; checkpoint: {checkpoint}")
    print(
        f"command: python bench/clicks.py --clicks {args.clicks} --concurrency {args.concurrency}"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
