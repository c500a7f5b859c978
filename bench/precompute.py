"""Bulk precompute with ``esam embed``: concurrency 8 against 1, then a run that sends nothing.

The full local stack (gateway + local CPU Triton with dynamic batching + Redis); two
disjoint sets of N generated 640×480 JPEGs, so that each concurrency encodes fresh
images; ``esam embed`` (the real command, as a subprocess) at concurrency 1 on the
first set and 8 on the second, then again at 8 on the second. Reported: images/s
and their ratio (the dynamic batcher at work: Triton's requests per execution),
and for the repeat, the POST /embed requests the gateway saw and Triton's
executions (both should be 0).

    python bench/precompute.py                 # 200 images per set
    python bench/precompute.py --images 40
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from devtools.prometheus import sample_sum
from devtools.stack import local_stack
from devtools.triton_config import MODEL

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"


def write_images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640]
    for n in range(count):
        base = (x * rng.uniform(0.1, 0.4) + y * rng.uniform(0.1, 0.4)) % 256
        pixels = np.stack([base, base[::-1], base[:, ::-1]], axis=-1)
        pixels = pixels + rng.normal(0, 12, pixels.shape)
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
        (folder / f"{n:04d}.jpg").write_bytes(out.getvalue())


def counters(gateway_url: str, triton_metrics: str) -> dict[str, float]:
    gateway = httpx.get(f"{gateway_url}/metrics").text
    triton = httpx.get(triton_metrics).text
    return {
        "embed_requests": sample_sum(
            gateway, "esam_request_duration_seconds_count", route="/embed"
        ),
        "executions": sample_sum(triton, "nv_inference_exec_count", model=MODEL),
        "inferences": sample_sum(triton, "nv_inference_request_success", model=MODEL),
    }


def esam_embed(folder: Path, url: str, concurrency: int) -> dict[str, Any]:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "esam_client.cli",
            "embed",
            str(folder),
            "--url",
            url,
            "--concurrency",
            str(concurrency),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200, help="images per set")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "precompute.json")
    args = parser.parse_args()
    checkpoint = str(CHECKPOINT) if CHECKPOINT.exists() else "random"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        sets = {1: Path(workdir) / "set1", 8: Path(workdir) / "set8"}
        for seed, folder in enumerate(sets.values()):
            write_images(folder, args.images, seed)
        with local_stack(Path(workdir), checkpoint, redis_url=args.redis_url) as stack:
            url = stack.gateways[0].url
            metrics = f"http://127.0.0.1:{stack.triton.metrics_port}/metrics"
            for name, concurrency, folder in [
                ("concurrency 1", 1, sets[1]),
                ("concurrency 8", 8, sets[8]),
                ("concurrency 8, again", 8, sets[8]),
            ]:
                before = counters(url, metrics)
                started = time.monotonic()
                summary = esam_embed(folder, url, concurrency)
                seconds = time.monotonic() - started
                after = counters(url, metrics)
                delta = {k: after[k] - before[k] for k in after}
                rows.append(
                    {
                        "run": name,
                        "images": summary["images"],
                        "images_per_s": summary["images_per_s"],
                        "seconds": round(seconds, 1),
                        "uploaded": summary["uploaded"],
                        "already_cached": summary["already_cached"],
                        "failed": len(summary["failed"]),
                        "gateway_embed_requests": delta["embed_requests"],
                        "triton_executions": delta["executions"],
                        "requests_per_execution": round(
                            delta["inferences"] / delta["executions"], 2
                        )
                        if delta["executions"]
                        else None,
                    }
                )
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv),
        "rows": rows,
        "concurrency_8_over_1": round(ratio, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| run | images | images/s | uploaded | already cached | POST /embed seen | "
          "Triton executions | requests/execution |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | {r['images']} | {r['images_per_s']} | {r['uploaded']} | "
            f"{r['already_cached']} | {r['gateway_embed_requests']:.0f} | "
            f"{r['triton_executions']:.0f} | {r['requests_per_execution']} |"
        )
    print(f"\nconcurrency 8 / 1: {ratio:.2f}x images/s")


if __name__ == "__main__":
    main()
