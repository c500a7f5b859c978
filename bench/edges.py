"""Edge detection (``POST /edges``'s pipeline) on this machine, and the README's picture.

On a 1080p photo-like image's embedding (EfficientSAM-Ti, the fixture checkpoint or
random weights), in one run: the paper's 16² grid through ``service.core.edges.edge_map``
(every step timed), against segment everything on the same grid with SAM's filters as
the baseline (the same decoder calls; it upsamples only the candidates its filters keep).

    python bench/edges.py                               # timings, 2 repeats each
    python bench/edges.py --picture PHOTO --out docs/images/edges.jpg
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
from PIL import Image

from devtools.benchmarking import photo_jpeg
from service.core.edges import EdgeParams, edge_map
from service.core.everything import Crop, EverythingParams, segment_everything
from service.model import EfficientSam, load_named
from service.model.preprocess import decode_image, resize_to_model

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"


def whole_image(model: EfficientSam, image: bytes) -> tuple[Crop, int, int]:
    rgb = decode_image(image)
    height, width = rgb.shape[:2]
    with torch.inference_mode():
        embedding = model.embed(resize_to_model(rgb)[None])
    return Crop((0, 0, width, height), embedding), width, height


def picture(model: EfficientSam, photo: Path, out: Path, grid: int) -> None:
    """The photo and its edge map side by side (the map inverted: edges dark on white)."""
    data = photo.read_bytes()
    crop, width, height = whole_image(model, data)
    found = edge_map(model, [crop], width, height, EdgeParams(points_per_side=grid))
    edges = Image.fromarray(255 - np.rint(found.strength * 255).astype(np.uint8)).convert("RGB")
    sheet = Image.new("RGB", (2 * width, height), "white")
    sheet.paste(Image.fromarray(decode_image(data)), (0, 0))
    sheet.paste(edges, (width, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=88)
    print(f"wrote {out}: {found.masks} masks of {found.candidates} candidates, {grid}² grid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--picture", type=Path, default=None, help="a photo: write the picture")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "edges.jpg")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = str(CHECKPOINT) if CHECKPOINT.exists() else "random"
    model = load_named(checkpoint, "ti").eval()
    if args.picture:
        picture(model, args.picture, args.out, args.grid)
        return
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads; checkpoint {Path(checkpoint).name}"
    )
    crop, width, height = whole_image(model, photo_jpeg(3))
    edges_s, everything_s = [], []
    steps: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved: both see the same machine
        start = time.perf_counter()
        found = edge_map(model, [crop], width, height, EdgeParams(points_per_side=args.grid))
        edges_s.append(time.perf_counter() - start)
        for step, seconds in found.seconds.items():
            steps.setdefault(step, []).append(seconds)
        start = time.perf_counter()
        masks = segment_everything(
            model, [crop], width, height, EverythingParams(points_per_side=args.grid)
        )
        everything_s.append(time.perf_counter() - start)
    edges_median, everything_median = statistics.median(edges_s), statistics.median(everything_s)
    print(f"{width}x{height}, {args.grid}² grid, {args.repeats} repeats, medians:")
    print(
        f"  /edges pipeline        {edges_median:7.2f} s  ({found.candidates} candidates, "
        f"{found.masks} masks after NMS)"
    )
    for step, values in steps.items():
        print(f"    {step:<8} {statistics.median(values):7.2f} s")
    print(
        f"  segment everything     {everything_median:7.2f} s  ({len(masks)} masks, SAM's filters)"
    )
    print(f"  ratio edges / everything: {edges_median / everything_median:.2f}")


if __name__ == "__main__":
    main()
