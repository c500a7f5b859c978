"""Segment everything: time per image after the embedding, and peak memory.

In process, on the fixture checkpoint and the fixture image's embedding (what
``POST /segment/everything`` runs in the gateway's decoder thread, minus HTTP):

* the 16×16, 32×32 and 64×64 grids with SAM's default thresholds and with the
  fixture's lenient ones (random weights predict IoU ≈ 0.01, so SAM's thresholds
  drop every candidate before upsampling: decoder-bound; the lenient ones keep
  most: upsampling, stability and RLE of every candidate, the worst case);
* baselines in the same run: the mask decoder with the image expanded to every
  prompt before its first block (as the reference) against the shared first block,
  64 prompts, alternately; one point per decoder call (``points_per_batch`` 1)
  against batches of 64; and a 12 MP image with the full-size logits of a whole
  batch at once (no memory budget) against chunks under the 256 MB budget.

Peak memory: growth of the resident set over the job (the kernel's ``VmHWM``, reset
before each case).

    python bench/everything.py                   # all of it (~10 minutes on 2 cores)
    python bench/everything.py --grids 16 32     # fewer grids
    python bench/everything.py --device cuda     # on a GPU (the goal: 32×32 in < 150 ms, H100)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from devtools.benchmarking import sync
from devtools.peak_memory import reset_peak, status_mb
from service.core.everything import Crop, EverythingParams, segment_everything
from service.model import EfficientSam, load_model
from service.model.prompt_encoder import LABEL_PADDING

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
FIXTURE = FIXTURE / "efficientsam-ti-seed0"
WIDTH, HEIGHT = 1072, 603
SAM_DEFAULTS = EverythingParams()
#: everything.json's thresholds, chosen for the random weights
LENIENT = EverythingParams(
    pred_iou_thresh=-0.01, stability_score_thresh=0.45, stability_score_offset=0.05
)
BUDGET = 256 << 20


def run(
    model: torch.nn.Module,
    embedding: torch.Tensor,
    size: tuple[int, int],
    params: EverythingParams,
    budget: int = BUDGET,
) -> tuple[float, float, int]:
    """(seconds, peak RSS growth MB, masks returned)."""
    width, height = size
    before = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    found = segment_everything(
        model,  # type: ignore[arg-type]
        [Crop((0, 0, width, height), embedding)],
        width,
        height,
        params,
        memory_budget_bytes=budget,
    )
    seconds = time.perf_counter() - start
    return seconds, status_mb("VmHWM") - before, len(found)


def decoder_ab(
    model: EfficientSam, embedding: torch.Tensor, repeats: int = 5
) -> tuple[float, float]:
    """Median ms per prompt of the mask decoder: image expanded per prompt, then shared."""
    points = torch.rand(64, 1, 2, generator=torch.Generator().manual_seed(0)) * 1024
    points, labels = points.to(embedding.device), torch.ones(64, 1, device=embedding.device)
    pad = model.config.max_points - 1
    padded = torch.nn.functional.pad(points, (0, 0, 0, pad), value=-1.0)
    tokens = model.prompt_encoder(
        padded, torch.nn.functional.pad(labels, (0, pad), value=float(LABEL_PADDING))
    )
    pe = model.prompt_encoder.dense_positions()
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        for _ in range(repeats):
            for expand in (True, False):
                image = embedding.expand(64, -1, -1, -1) if expand else embedding
                start = time.perf_counter()
                model.mask_decoder(image, pe, tokens)
                sync(embedding.device)
                times[expand].append((time.perf_counter() - start) / 64 * 1e3)
    return statistics.median(times[True]), statistics.median(times[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grids", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--device", default="cpu", help="where the decoder runs (cuda on a GPU)")
    args = parser.parse_args()

    model = load_model(FIXTURE / "efficient_sam_vitt_random_seed0.pt").to(args.device)
    with np.load(FIXTURE / "expected.npz") as data:
        embedding = torch.from_numpy(data["image_embeddings"]).float().to(args.device)
    run(model, embedding, (WIDTH, HEIGHT), EverythingParams(points_per_side=2))  # warm-up

    print(
        f"# segment everything: {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, decoder on {args.device}; "
        "EfficientSAM-Ti, fixture "
        f"image {WIDTH}x{HEIGHT}, points_per_batch 64, memory budget {BUDGET >> 20} MB"
    )
    print("| grid | prompts | thresholds | seconds | ms per prompt | masks | peak growth MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.grids:
        for name, base in (("SAM defaults", SAM_DEFAULTS), ("lenient (fixture)", LENIENT)):
            params = EverythingParams(**{**base.__dict__, "points_per_side": n})
            seconds, peak, masks = run(model, embedding, (WIDTH, HEIGHT), params)
            print(
                f"| {n}×{n} | {n * n} | {name} | {seconds:.2f} | {seconds / (n * n) * 1e3:.1f} | "
                f"{masks} | {peak:.0f} |"
            )

    print("\n# baseline: the image expanded to every prompt before the decoder's first block")
    print("| mask decoder, 64 prompts | median ms per prompt | speed-up |")
    print("| --- | --- | --- |")
    expanded, shared = decoder_ab(model, embedding)
    print(f"| image expanded per prompt (before) | {expanded:.1f} | 1.00× |")
    print(f"| first block shared (after) | {shared:.1f} | {expanded / shared:.2f}× |")

    print("\n# baseline: one point per decoder call, 16×16, SAM defaults")
    print("| points per decoder call | seconds | speed-up |")
    print("| --- | --- | --- |")
    grid16 = EverythingParams(points_per_side=16)
    single, _, _ = run(model, embedding, (WIDTH, HEIGHT), EverythingParams(16, 1))
    batched, _, _ = run(model, embedding, (WIDTH, HEIGHT), grid16)
    print(f"| 1 | {single:.2f} | 1.00× |")
    print(f"| 64 | {batched:.2f} | {single / batched:.2f}× |")

    print("\n# baseline: a whole batch's full-size logits at once, 12 MP (4000x3000), 4×4 grid")
    print("# lenient thresholds, 16 points per batch (48 candidates)")
    print("| full-size logits | seconds | peak growth MB | masks |")
    print("| --- | --- | --- | --- |")
    big = EverythingParams(**{**LENIENT.__dict__, "points_per_side": 4, "points_per_batch": 16})
    for label, budget in (
        ("whole batch at once", 1 << 40),
        (f"chunks under {BUDGET >> 20} MB", BUDGET),
    ):
        seconds, peak, masks = run(model, embedding, (4000, 3000), big, budget)
        print(f"| {label} | {seconds:.2f} | {peak:.0f} | {masks} |")


if __name__ == "__main__":
    main()
