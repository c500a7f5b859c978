"""One-shot GPU benchmark: the model at every precision and batch, then Triton end to end.

1. ``bench/model.py``'s encoder timing for Ti and S, fp32 / bf16 / fp16, batch 1 and 32
   (fp32 also against the explicit-softmax baseline of the reference);
2. tritonserver (from ``nvidia-pytriton``) with the production GPU configurations of
   ``model_repository/`` (``efficientsam`` = preprocessing → encoder, bf16, FP16 between
   them), driven with 1080p JPEG bytes at concurrency 1, 4, 16, 64: images/s, p50/p99,
   requests per encoder execution;
3. segment everything on one embedding with the decoder on the GPU: the 16×16, 32×32
   and 64×64 grids (the goal: 32×32 in < 150 ms on an H100), SAM's default thresholds
   and lenient ones (every candidate upsampled and scored);
4. clicks on ``efficientsam_decoder`` in the same tritonserver (production GPU config,
   embeddings resident): one point, multimask, 1080p masks as run lengths, each request
   for one of 64 resident images, at concurrency 1, 16, 64, 256: prompts/s, p50/p99,
   requests per execution (goals on an H100: ≥ 30,000 prompts/s, p99 ≤ 25 ms at 64);
5. one JSON and one Markdown table in ``--out`` (default ``build/bench/gpu``).

``--dry-run`` runs the same path on the CPU, small (Ti, fp32, batch 1 and 2, the CPU
configurations, concurrency 1 and 2, a 2×2 grid): a check that the script works, in CI.

    bench/gpu.sh               # on a machine with one NVIDIA GPU
    bench/gpu.sh --dry-run     # anywhere, < 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tritonclient.utils import np_to_triton_dtype

from devtools.benchmarking import (
    as_baseline,
    bytes_input,
    drive,
    photo_jpeg,
    time_encoder,
)
from devtools.redis_server import free_port
from devtools.triton import LocalTriton
from devtools.triton_config import DECODER, ENSEMBLE, MODEL
from service.core.decoders.triton import embedding_inputs
from service.core.embedding import Embedding, EmbeddingDtype
from service.core.loading import load_serving_model
from service.model import Precision, Variant, random_model

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"


def model_rows(device: torch.device, dry_run: bool) -> list[dict[str, Any]]:
    torch.set_grad_enabled(False)
    variants: list[Variant] = ["ti"] if dry_run else ["ti", "s"]
    precisions: list[Precision] = ["fp32"] if dry_run else ["fp32", "bf16", "fp16"]
    batches = [1, 2] if dry_run else [1, 32]
    repeats = 1 if dry_run else 5
    rows = []
    for variant in variants:
        model = random_model(variant).to(device).eval()
        for batch in batches:
            for precision in precisions:
                seconds = time_encoder(model, precision, batch, repeats)
                row: dict[str, Any] = {
                    "variant": variant,
                    "precision": precision,
                    "batch": batch,
                    "ms": round(seconds * 1e3, 2),
                    "images_per_s": round(batch / seconds, 1),
                }
                if precision == "fp32":
                    base = time_encoder(as_baseline(model), "fp32", batch, repeats)
                    row["baseline_images_per_s"] = round(batch / base, 1)
                    row["speed_up"] = round(base / seconds, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def everything_rows(device: torch.device, dry_run: bool) -> list[dict[str, Any]]:
    """Seconds per image after the embedding, decoder on ``device`` (1080p image)."""
    from service.core.everything import Crop, EverythingParams, segment_everything

    model = random_model("ti").to(device).eval()
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    width, height = 1920, 1080
    whole = [Crop((0, 0, width, height), embedding)]
    lenient = {"pred_iou_thresh": -1.0, "stability_score_thresh": 0.0}
    segment_everything(model, whole, width, height, EverythingParams(points_per_side=2))
    rows = []
    for n in [2] if dry_run else [16, 32, 64]:
        for name, thresholds in (("SAM defaults", {}), ("lenient", lenient)):
            params = EverythingParams(points_per_side=n, **thresholds)  # type: ignore[arg-type]
            start = time.perf_counter()
            found = segment_everything(model, whole, width, height, params)
            seconds = time.perf_counter() - start  # the masks come back to the CPU: synced
            row = {
                "grid": n,
                "thresholds": name,
                "ms": round(seconds * 1e3, 1),
                "masks": len(found),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def edges_rows(device: torch.device, dry_run: bool) -> list[dict[str, Any]]:
    """Edge detection after the embedding (the paper's 16² grid, 768 candidates), decoder
    on ``device``, 1080p; goal on an H100: <= 100 ms."""
    from service.core.edges import EdgeParams, edge_map
    from service.core.everything import Crop

    model = random_model("ti").to(device).eval()
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    width, height = 1920, 1080
    whole = [Crop((0, 0, width, height), embedding.to(device))]
    edge_map(model, whole, width, height, EdgeParams(points_per_side=2))  # warm-up
    rows = []
    for n in [2] if dry_run else [16, 16, 16]:
        start = time.perf_counter()
        found = edge_map(model, whole, width, height, EdgeParams(points_per_side=n))
        seconds = time.perf_counter() - start  # the map comes back to the CPU: synced
        row = {
            "grid": n,
            "ms": round(seconds * 1e3, 1),
            "candidates": found.candidates,
            "masks": found.masks,
            **{f"{step}_ms": round(s * 1e3, 1) for step, s in found.seconds.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


async def triton_rows(
    server: LocalTriton, levels: list[int], per_level: int
) -> list[dict[str, Any]]:
    import tritonclient.grpc.aio as grpcclient

    rows = []
    seed = iter(range(50_000, 10_000_000))
    async with grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://")) as client:
        for c in levels:
            n = max(per_level, 2 * c)
            images = [photo_jpeg(next(seed)) for _ in range(n + 1)]

            async def call(index: int, images: list[bytes] = images) -> None:
                await client.infer(ENSEMBLE, [bytes_input(images[index])])

            await call(n)  # warm-up (first executions build kernels)
            executions = server.counter("nv_inference_exec_count", MODEL)
            wall, latencies = await drive(call, n, c)
            per_execution = n / max(
                server.counter("nv_inference_exec_count", MODEL) - executions, 1
            )
            row = {
                "concurrency": c,
                "requests": n,
                "images_per_s": round(n / wall, 1),
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1),
                "requests_per_execution": round(per_execution, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def click_inputs(module: Any, index: int, embedding: Embedding | None = None) -> list[Any]:
    """One click on a 1080p image (model-frame point), as the gateway sends it (with the
    embedding as the gateway caches it: FP16, or int8 values and their scales)."""
    x, y = 100 + (index * 37) % 800, 100 + (index * 53) % 800
    tensors: dict[str, np.ndarray] = {
        "points": np.array([[[[x, y]]]], dtype=np.float32),
        "labels": np.ones((1, 1, 1), dtype=np.float32),
        "image_size": np.array([[1080, 1920]], dtype=np.int32),
    }
    if embedding is not None:
        tensors.update(embedding_inputs(embedding))
    inputs = []
    for name, array in tensors.items():
        kind = np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


async def decoder_rows(
    server: LocalTriton,
    levels: list[int],
    per_level: int,
    images: int,
    model_id: str,
    dtype: EmbeddingDtype,
) -> list[dict[str, Any]]:
    """Clicks of ``images`` resident images on efficientsam_decoder at each concurrency
    (``model_id``: the checkpoint's, as a gateway names it: the decoder checks it), the
    embeddings resident in ``dtype`` (float16, or int8 dequantised per execution)."""
    import tritonclient.grpc.aio as grpcclient

    outputs = [
        grpcclient.InferRequestedOutput(n)
        for n in ("status", "scores", "rle_lengths", "rle_counts")
    ]
    rng = np.random.default_rng(0)
    rows = []
    async with grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://")) as client:

        async def click(index: int, embedding: Embedding | None = None) -> None:
            key = f"{model_id}/{index % images}/{dtype}"
            result = await client.infer(
                DECODER,
                click_inputs(grpcclient, index, embedding),
                outputs=outputs,
                parameters={"image": key, "candidates": "multimask"},
            )
            if int(result.as_numpy("status").reshape(-1)[0]) != 0:
                raise RuntimeError(f"image {index % images} is not resident")

        for i in range(images):  # resident first (2 MiB each in FP16, 1 MiB in int8)
            array = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
            await click(i, Embedding.from_array(array, 1920, 1080, dtype))
        for c in levels:
            n = max(per_level, 4 * c)
            requests = server.counter("nv_inference_count", DECODER)
            executions = server.counter("nv_inference_exec_count", DECODER)
            wall, latencies = await drive(click, n, c)
            requests = server.counter("nv_inference_count", DECODER) - requests
            executions = server.counter("nv_inference_exec_count", DECODER) - executions
            row = {
                "embedding": dtype,
                "concurrency": c,
                "requests": n,
                "prompts_per_s": round(n / wall, 1),
                "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1),
                "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1),
                "requests_per_execution": round(requests / max(executions, 1), 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# bench/gpu.py {'(dry run, CPU)' if result['dry_run'] else ''}",
        "",
        f"{result['device']}; torch {result['torch']}; {result['machine']}",
        "",
        "| model | precision | batch | ms | images/s | vs explicit-softmax fp32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.get("model", []):
        speed_up = f"{r['speed_up']:.2f}×" if "speed_up" in r else "-"
        lines.append(
            f"| {r['variant']} | {r['precision']} | {r['batch']} | {r['ms']:.1f} | "
            f"{r['images_per_s']:.1f} | {speed_up} |"
        )
    lines += [
        "",
        "Triton end to end (1080p JPEG bytes in, the embedding out, gRPC; "
        + ("CPU configurations):" if result["dry_run"] else "production GPU configurations):"),
        "",
        "| concurrency | requests | images/s | p50 ms | p99 ms | requests per execution |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.get("triton", []):
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['requests_per_execution']:.2f} |"
        )
    lines += [
        "",
        "Segment everything after the embedding (1080p, decoder on the benchmark's device):",
        "",
        "| grid | thresholds | ms | masks |",
        "| --- | --- | --- | --- |",
    ]
    for r in result.get("everything", []):
        lines.append(
            f"| {r['grid']}×{r['grid']} | {r['thresholds']} | {r['ms']:.0f} | {r['masks']} |"
        )
    lines += [
        "",
        "Edge detection after the embedding (1080p, all candidates, NMS, Sobel, thinning):",
        "",
        "| grid | ms | candidates | masks | decode ms | NMS ms | edges ms | thin ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.get("edges", []):
        lines.append(
            f"| {r['grid']}×{r['grid']} | {r['ms']:.0f} | {r['candidates']} | {r['masks']} | "
            f"{r['decode_ms']:.0f} | {r['nms_ms']:.0f} | {r['edges_ms']:.0f} | "
            f"{r['thin_ms']:.0f} |"
        )
    lines += [
        "",
        "Clicks on efficientsam_decoder (embeddings resident; one point, multimask, 1080p "
        "masks as run lengths; gRPC):",
        "",
        "| resident as | concurrency | requests | prompts/s | p50 ms | p99 ms | "
        "requests per execution |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.get("decoder", []):
        lines.append(
            f"| {r['embedding']} | {r['concurrency']} | {r['requests']} | "
            f"{r['prompts_per_s']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests_per_execution']:.2f} |"
        )
    for stage, error in result.get("errors", {}).items():
        lines += ["", f"**{stage} failed**:", "", "```", error, "```"]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    """Whatever has been measured so far: a later stage's failure or a timeout keeps it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2))
    (out / "gpu.md").write_text(markdown(result))


def stage(result: dict[str, Any], out: Path, name: str, run: Callable[[], Any]) -> bool:
    """``result[name] = run()``; a failure is recorded under ``errors`` and the next stages
    still run (one machine, one try: every figure that can be had is kept)."""
    try:
        result[name] = run()
        return True
    except Exception:
        result.setdefault("errors", {})[name] = traceback.format_exc()[-6000:]
        print(f"{name} failed:\n{result['errors'][name]}", file=sys.stderr, flush=True)
        return False
    finally:
        write(result, out)


STAGES = ("model", "everything", "edges", "triton", "decoder")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same path on the CPU, small")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "gpu")
    parser.add_argument("--triton-log", type=Path, help="where to keep tritonserver's log")
    parser.add_argument(
        "--triton-arg", action="append", default=[], help="a tritonserver option (repeatable)"
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated, of {', '.join(STAGES)} (default: all)",
    )
    args = parser.parse_args()
    start_time = time.monotonic()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    result: dict[str, Any] = {
        "dry_run": args.dry_run,
        "device": f"{device.type}: {name or platform.machine()}",
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    wanted = set(args.stages.split(","))
    if "model" in wanted:
        stage(result, args.out, "model", lambda: model_rows(device, args.dry_run))
    if "everything" in wanted:
        stage(result, args.out, "everything", lambda: everything_rows(device, args.dry_run))
    if "edges" in wanted:
        stage(result, args.out, "edges", lambda: edges_rows(device, args.dry_run))
    if not wanted & {"triton", "decoder"}:
        result["seconds"] = round(time.monotonic() - start_time, 1)
        write(result, args.out)
        print(markdown(result))
        return 1 if result.get("errors") else 0
    checkpoint = str(CHECKPOINT) if CHECKPOINT.exists() else "random"
    with tempfile.TemporaryDirectory() as workdir:
        log = Path(workdir) / "tritonserver.log"
        server = LocalTriton(
            Path(workdir),
            checkpoint,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            log_path=log,
            gpu=not args.dry_run,
            max_batch=2 if args.dry_run else 32,
            decoder=True,
            decoder_resident_bytes=1 << 30,
            extra_args=tuple(args.triton_arg),
        )

        def start() -> str:
            try:
                server.start(timeout_s=300)
            except Exception as exc:
                text = log.read_text(errors="replace") if log.exists() else ""
                # Triton's errors (E lines, failed loads), then the end of its log
                errors = [
                    line
                    for line in text.splitlines()
                    if line.startswith("E") or "failed to load" in line or "Error" in line
                ]
                raise RuntimeError(
                    f"{exc}\n--- errors in tritonserver.log ---\n"
                    + "\n".join(errors)[-6000:]
                    + f"\n--- tritonserver.log (end) ---\n{text[-1500:]}"
                ) from exc
            return "ready"

        started = stage(result, args.out, "triton_start", start)
        if not started and "decoder" in wanted:
            # the encoder's figures without the decoder that failed (its error is kept)
            result["errors"]["triton_start_with_decoder"] = result["errors"].pop("triton_start")
            server.decoder = False
            server._prepared = None
            wanted.discard("decoder")
            started = stage(result, args.out, "triton_start", start)
        if started:
            try:
                levels = [1, 2] if args.dry_run else [1, 4, 16, 64]
                per_level = 2 if args.dry_run else 128
                if "triton" in wanted:
                    stage(
                        result,
                        args.out,
                        "triton",
                        lambda: asyncio.run(triton_rows(server, levels, per_level)),
                    )
                click_levels = [1, 2] if args.dry_run else [1, 16, 64, 256]
                model_id = load_serving_model(checkpoint, None, "cpu").model_id
                clicks, images = (4, 2) if args.dry_run else (2048, 64)
                dtypes: tuple[tuple[EmbeddingDtype, list[int]], ...] = (
                    ("float16", click_levels),
                    ("int8", click_levels[-1:]),
                )
                if "decoder" not in wanted:
                    return 1 if result.get("errors") else 0
                stage(
                    result,
                    args.out,
                    "decoder",
                    lambda: [
                        row
                        # every level with FP16 residents, the busiest with int8 (the default)
                        for dtype, dtype_levels in dtypes
                        for row in asyncio.run(
                            decoder_rows(server, dtype_levels, clicks, images, model_id, dtype)
                        )
                    ],
                )
            finally:
                server.stop()
                if args.triton_log is not None and log.exists():
                    shutil.copy(log, args.triton_log)  # what the server said, kept
    result["seconds"] = round(time.monotonic() - start_time, 1)
    write(result, args.out)
    print(markdown(result))
    print(f"wrote {args.out / 'gpu.json'} and gpu.md in {result['seconds']} s")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
