"""An annotator's latency beside a bulk precompute, and beside another tenant's flood.

One local Triton on CPU (the fixture's encoder) and real gateways
(``python -m service``, ``ESAM_ENCODER=triton``, the local decoder). Triton runs at
``nice 19`` (``--no-nice`` to turn it off): on a 2-core machine it would otherwise take
the gateway's cores, and what this measures is queueing, which a GPU box does not share
with the gateway's CPU. In one run:

1. **idle**: the annotator's new-image ``/embed`` latency (``--new-images`` fresh 1080p
   JPEGs, one after another) and click latency (``--clicks`` on a cached image);
2. **bulk, unmarked** (how bulk work ran before ``X-Priority``): ``--bulk`` images at
   concurrency ``--concurrency`` (429 answers retried after ``Retry-After``), the
   annotator measured as in 1 while it runs;
3. **bulk, ``X-Priority: bulk``**: the same with the header;
4. **two tenants**: tenant ``flood`` clicks at concurrency 16 without pause, tenant
   ``team`` clicks as in 1; once on a gateway without tenant limits, once with
   ``ESAM_TENANT_LIMITS`` giving ``flood`` 2 requests/s (an annotator clicks about once a second).

    python bench/priority.py                 # the defaults: 120 bulk images at 16
    python bench/priority.py --bulk 40 --clicks 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from devtools.benchmarking import photo_jpeg
from devtools.gateway_process import GatewayProcess
from devtools.redis_server import free_port
from devtools.triton import LocalTriton

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
JPEG = {"Content-Type": "image/jpeg"}
FLOOD_KEY = "flood-key-0123456789abcdef"
TEAM_KEY = "team-key-0123456789abcdef"
CLICK = {"prompts": [{"points": [[960, 540]], "labels": [1]}], "best_only": True}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


async def timed(call: Callable[[], Awaitable[httpx.Response]]) -> float:
    start = time.perf_counter()
    response = await call()
    assert response.status_code == 200, response.text[:300]
    return (time.perf_counter() - start) * 1e3


class Annotator:
    def __init__(self, client: httpx.AsyncClient, seed: int, headers: dict[str, str]) -> None:
        self.client, self.seed, self.headers = client, seed, headers
        self.image_id = ""

    async def open(self) -> None:
        body = await self.client.post(
            "/embed", content=photo_jpeg(self.seed), headers={**JPEG, **self.headers}
        )
        self.image_id = body.json()["image_id"]

    async def new_images(self, count: int, first_seed: int) -> list[float]:
        samples = []
        for seed in range(first_seed, first_seed + count):
            data = photo_jpeg(seed)
            headers = {**JPEG, **self.headers}
            post = functools.partial(self.client.post, "/embed", content=data, headers=headers)
            samples.append(await timed(post))
        return samples

    async def clicks(self, count: int) -> list[float]:
        body = {"image_id": self.image_id, **CLICK}
        return [
            await timed(lambda: self.client.post("/segment", json=body, headers=self.headers))
            for _ in range(count)
        ]


async def bulk_job(
    client: httpx.AsyncClient, seeds: range, concurrency: int, headers: dict[str, str]
) -> dict[str, float]:
    queue = list(seeds)
    refused = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal refused
        while queue:
            data = photo_jpeg(queue.pop(), size=(640, 480))
            while True:
                response = await client.post("/embed", content=data, headers={**JPEG, **headers})
                if response.status_code != 429:
                    assert response.status_code == 200, response.text[:300]
                    break
                refused += 1
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - start, "refused": refused}


def gateway(server: LocalTriton, **settings: str) -> GatewayProcess:
    return GatewayProcess(
        {
            "ESAM_CHECKPOINT": str(CHECKPOINT),
            "ESAM_ENCODER": "triton",
            "ESAM_TRITON_URL": server.grpc_url,
            "ESAM_ENCODE_TIMEOUT_S": "900",
            **settings,
        }
    )


async def beside_bulk(args: argparse.Namespace, server: LocalTriton) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with gateway(server) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=1800) as client:
            annotator = Annotator(client, 7, {})
            await annotator.open()
            await annotator.clicks(2)  # warm-up
            results["idle"] = {
                "embed": await annotator.new_images(args.new_images, 1000),
                "click": await annotator.clicks(args.clicks),
            }
            for phase, headers, first in (
                ("bulk unmarked", {}, 10_000),
                ("bulk X-Priority: bulk", {"X-Priority": "bulk"}, 20_000),
            ):
                seeds = range(first, first + args.bulk)
                job = asyncio.create_task(bulk_job(client, seeds, args.concurrency, headers))
                await asyncio.sleep(args.settle_s)  # the bulk job's queue fills
                embeds = await annotator.new_images(args.new_images, first + 5000)
                clicks = await annotator.clicks(args.clicks)
                results[phase] = {"embed": embeds, "click": clicks, "job": await job}
    return results


async def flood(client: httpx.AsyncClient, image_id: str, stop: asyncio.Event) -> int:
    sent = 0
    body = {"image_id": image_id, **CLICK}
    headers = {"Authorization": f"Bearer {FLOOD_KEY}"}

    async def worker() -> None:
        nonlocal sent
        while not stop.is_set():
            response = await client.post("/segment", json=body, headers=headers)
            sent += 1
            if response.status_code == 429:
                await asyncio.sleep(0.05)  # a client that barely backs off

    await asyncio.gather(*(worker() for _ in range(16)))
    return sent


async def two_tenants(args: argparse.Namespace, server: LocalTriton) -> dict[str, Any]:
    results: dict[str, Any] = {}
    keys = f"flood:{FLOOD_KEY},team:{TEAM_KEY}"
    for name, limits in (
        ("no tenant limits", "{}"),
        ("flood limited to 2/s", '{"flood": {"rps": 2}}'),
    ):
        with gateway(server, ESAM_API_KEYS=keys, ESAM_TENANT_LIMITS=limits) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=1800) as client:
                team = Annotator(client, 8, {"Authorization": f"Bearer {TEAM_KEY}"})
                flooder = Annotator(client, 9, {"Authorization": f"Bearer {FLOOD_KEY}"})
                await team.open()
                await flooder.open()
                await team.clicks(2)
                idle = await team.clicks(args.clicks)
                stop = asyncio.Event()
                flooding = asyncio.create_task(flood(client, flooder.image_id, stop))
                await asyncio.sleep(1)
                busy = await team.clicks(args.clicks)
                stop.set()
                sent = await flooding
                results[name] = {"idle": idle, "flooded": busy, "flood_requests": sent}
    return results


def report(bulk: dict[str, Any], tenants: dict[str, Any], args: argparse.Namespace) -> list[str]:
    idle_embed = statistics.median(bulk["idle"]["embed"])
    idle_click = statistics.median(bulk["idle"]["click"])
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Triton on CPU at nice "
        f"{'19' if args.nice else '0'}, encoder batch ≤ {args.max_batch}; `python "
        f"bench/priority.py --bulk {args.bulk} --max-batch {args.max_batch} "
        f"--concurrency {args.concurrency} --clicks {args.clicks} --new-images "
        f"{args.new_images}`",
        "",
        "| phase | new-image /embed p50 / p99, ms | × idle | click p50 / p99, ms | × idle "
        "| bulk job |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for phase, figures in bulk.items():
        e50, e99 = percentiles(figures["embed"])
        c50, c99 = percentiles(figures["click"])
        job = figures.get("job")
        done = f"{job['seconds']:.0f} s, {job['refused']:.0f} × 429" if job else ""
        lines.append(
            f"| {phase} | {e50:.0f} / {e99:.0f} | {e50 / idle_embed:.2f} | {c50:.0f} / {c99:.0f} "
            f"| {c50 / idle_click:.2f} | {done} |"
        )
    lines += [
        "",
        "| two tenants | team's click p50 idle, ms | flooded, ms | × idle | flood requests |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, figures in tenants.items():
        idle = statistics.median(figures["idle"])
        busy = statistics.median(figures["flooded"])
        lines.append(
            f"| {name} | {idle:.0f} | {busy:.0f} | {busy / idle:.2f} | "
            f"{figures['flood_requests']} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bulk", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--new-images", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument(
        "--max-batch", type=int, default=4, help="Triton's encoder batch (CPU config)"
    )
    parser.add_argument("--no-nice", dest="nice", action="store_false")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = LocalTriton(
            Path(workdir),
            str(CHECKPOINT),
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            output="fp16",
            max_batch=args.max_batch,
            log_path=Path(workdir) / "triton.log",
        )
        server.start()
        try:
            if args.nice and server.process is not None:
                with contextlib.suppress(OSError):  # the server and its model stubs
                    os.setpriority(os.PRIO_PGRP, server.process.pid, 19)
            bulk = asyncio.run(beside_bulk(args, server))
            tenants = asyncio.run(two_tenants(args, server))
        finally:
            server.stop()
    if args.json:
        args.json.write_text(json.dumps({"bulk": bulk, "tenants": tenants}, indent=1))
    print("\n".join(report(bulk, tenants, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
