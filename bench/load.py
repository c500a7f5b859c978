"""Load against the full local stack: gateway + local Triton + a real Redis.

Simulated annotators (``devtools.loadgen``) upload images and send
bursts of prompts, sometimes returning to earlier images. Reports throughput,
p50/p95/p99 per route, error rate, cache hit ratio (from the gateway's
metrics) and encoder batch sizes (from Triton's metrics). Bounded: a fixed
number of images per annotator and a deadline.

    python bench/load.py                          # 8 annotators x 3 images, 3-8 prompts each
    python bench/load.py --annotators 16 --images 4
    python bench/load.py --fault redis --fault-at 5 --fault-for 8    # kill Redis mid-run
    python bench/load.py --fault triton --fault-at 5 --fault-for 8   # stop Triton mid-run
    python bench/load.py --replicas 2 --fault redis                  # two gateways share Redis

With ``--fault`` the run uses a private redis-server (so it can be killed) and
reports latency and failures before, during and after the fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import tempfile
from pathlib import Path

import httpx
import numpy as np

from devtools.loadgen import LoadConfig, run_load
from devtools.prometheus import sample_sum
from devtools.redis_server import RedisServer
from devtools.stack import local_stack
from devtools.triton_config import MODEL

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", default=str(CHECKPOINT) if CHECKPOINT.exists() else "random"
    )
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--images", type=int, default=3, help="images per annotator")
    parser.add_argument("--deadline", type=float, default=600)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--replicas", type=int, default=1, help="gateway processes sharing Redis")
    parser.add_argument("--fault", choices=("redis", "triton"), default=None)
    parser.add_argument("--fault-at", type=float, default=5.0, help="seconds into the run")
    parser.add_argument("--fault-for", type=float, default=8.0, help="seconds of outage")
    args = parser.parse_args()

    outage = (0.0, 0.0)
    with tempfile.TemporaryDirectory() as workdir:
        private_redis = None
        if args.fault:
            private_redis = RedisServer(Path(workdir))
            private_redis.start()
            args.redis_url = private_redis.url
        with contextlib.ExitStack() as cleanup:
            if private_redis is not None:
                cleanup.callback(private_redis.stop)
            local = cleanup.enter_context(
                local_stack(
                    Path(workdir), args.checkpoint, redis_url=args.redis_url, replicas=args.replicas
                )
            )
            triton, gateways = local.triton, local.gateways
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(httpx.AsyncClient(base_url=g.url, timeout=600))
                    for g in gateways
                ]
                text = triton.metrics_text()
                exec_before = sample_sum(text, "nv_inference_exec_count", model=MODEL)
                triton_count = sample_sum(text, "nv_inference_request_success", model=MODEL)
                config = LoadConfig(
                    annotators=args.annotators,
                    images_per_annotator=args.images,
                    deadline_s=args.deadline,
                    upload_retries=20 if args.fault else 0,  # clients honour Retry-After
                )
                load = asyncio.create_task(run_load(clients, config))
                if args.fault:
                    await asyncio.sleep(args.fault_at)
                    target = private_redis if args.fault == "redis" else triton
                    assert target is not None
                    await asyncio.to_thread(target.stop)
                    outage_start = asyncio.get_running_loop().time()
                    await asyncio.sleep(args.fault_for)
                    await asyncio.to_thread(target.start)
                    outage = (outage_start, asyncio.get_running_loop().time())
                result = await load
                gateway_metrics = "\n".join([(await c.get("/metrics")).text for c in clients])
            text = triton.metrics_text()
            if args.fault == "triton":  # a restarted Triton counts from zero
                exec_before = triton_count = 0.0
            executions = sample_sum(text, "nv_inference_exec_count", model=MODEL) - exec_before
            requests = sample_sum(text, "nv_inference_request_success", model=MODEL) - triton_count

    lookups = {
        (tier, outcome): sample_sum(
            gateway_metrics, "esam_cache_lookups_total", tier=tier, outcome=outcome
        )
        for tier in ("l1", "redis")
        for outcome in ("hit", "miss", "error")
    }
    segment_hits = sum(1 for s in result.samples if s.route == "/segment" and s.status == 200)
    l1 = lookups[("l1", "hit")] / max(1.0, sum(v for (t, _), v in lookups.items() if t == "l1"))
    print(
        f"# load: {platform.machine()}, {os.cpu_count()} cores; {args.replicas} gateway process(es) + local Triton (CPU) "
        f"+ Redis; {args.annotators} annotators x {args.images} images, 3-8 prompts per image, "
        f"30% revisits; wall {result.wall_s:.1f} s"
    )
    print("| route | requests | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in result.summary_rows():
        print(row)
    total = len(result.samples)
    print(
        f"\nrequests {total}, throughput {total / result.wall_s:.2f} req/s, failed (5xx/429/no answer) "
        f"{len(result.failed)}, unexpected 4xx {len(result.unexpected)}"
    )
    print(
        f"cache: L1 hit ratio {l1:.1%} of lookups; redis hits {lookups[('redis', 'hit')]:.0f}, misses "
        f"{lookups[('redis', 'miss')]:.0f}, errors {lookups[('redis', 'error')]:.0f}; "
        f"{segment_hits} successful /segment calls ran no encoder"
    )
    if args.fault == "triton":
        print(
            "(Triton's counters restarted with it: the batch figures below cover the restarted server only)"
        )
    print(
        f"encoder: {requests:.0f} Triton requests in {executions:.0f} executions "
        f"({requests / max(executions, 1):.2f} images per batch); "
        f"gateway encoded {sample_sum(gateway_metrics, 'esam_encoder_images_total'):.0f} images"
    )
    print(
        f"re-uploads after 404: {sum(1 for s in result.samples if s.code == 'embedding_not_found')}"
    )
    if args.fault:
        # phases relative to the run's start (samples carry their start offset)
        fault_from = args.fault_at
        fault_to = fault_from + (outage[1] - outage[0])
        print(f"\n{args.fault} down from {fault_from:.1f} s to {fault_to:.1f} s of the run")
        print(
            "| phase | route | requests | ok | 503 | other failures | p50 ok ms | p95 ok ms | max latency ms |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        phases = (
            ("before", 0, fault_from),
            ("during", fault_from, fault_to),
            ("after", fault_to, 1e9),
        )
        for (name, lo, hi), route in itertools.product(phases, ("/embed", "/segment")):
            chunk = [s for s in result.samples if lo <= s.start < hi and s.route == route]
            if not chunk:
                continue
            ok = [s.latency_s * 1e3 for s in chunk if 200 <= s.status < 300]
            p50 = float(np.percentile(ok, 50)) if ok else float("nan")
            p95 = float(np.percentile(ok, 95)) if ok else float("nan")
            other = sum(
                s.status == 0 or (s.status >= 500 and s.status != 503) or s.status == 429
                for s in chunk
            )
            print(
                f"| {name} | {route} | {len(chunk)} | {len(ok)} | {sum(s.status == 503 for s in chunk)} | "
                f"{other} | {p50:.0f} | {p95:.0f} | {max(s.latency_s for s in chunk) * 1e3:.0f} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
