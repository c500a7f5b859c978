"""``esam``: precompute a dataset's embeddings, segment one image, or all of it.

    esam embed PATH... --url URL [--concurrency N]     files, folders, globs
    esam segment IMAGE --point x,y[,label] ... [--box x0,y0,x1,y1] --out masks.json
    esam everything IMAGE --out coco.json [--points-per-side N] ...

The gateway's URL and API key may come from ``ESAM_URL`` and ``ESAM_API_KEY``.
``embed`` prints a JSON summary and exits 1 when any image failed.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from esam_client.clients import AsyncEsamClient, EsamClient
from esam_client.errors import EsamError
from esam_client.models import Prompt

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def image_paths(arguments: Sequence[str]) -> list[Path]:
    """Files as given, image files under folders (recursively), glob matches; sorted, once."""
    found: set[Path] = set()

    def add(path: Path) -> None:
        if path.is_dir():
            found.update(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            found.add(path)

    for argument in arguments:
        if glob.has_magic(argument):
            for match in glob.glob(argument, recursive=True):
                add(Path(match))
        else:
            add(Path(argument))
    return sorted(found)


class Progress:
    """One status line on stderr: done/total, images/s, cache hits, failures."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.hits, self.failed = total, 0, 0, 0
        self.started = time.monotonic()
        self.live = sys.stderr.isatty()

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        return (
            f"{self.done}/{self.total} images  {self.rate():.1f} images/s  "
            f"{self.hits} already cached  {self.failed} failed"
        )

    def update(self, *, hit: bool = False, failed: bool = False) -> None:
        self.done += 1
        self.hits += hit
        self.failed += failed
        if self.live:
            print("\r" + self.line(), end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        print(("\r" if self.live else "") + self.line(), file=sys.stderr, flush=True)


async def embed_all(
    paths: Sequence[Path], url: str, api_key: str | None, concurrency: int
) -> dict[str, Any]:
    progress = Progress(len(paths))
    failures: list[dict[str, str]] = []
    uploaded = encoded = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(client: AsyncEsamClient, path: Path) -> None:
        nonlocal uploaded, encoded
        async with gate:
            try:
                result = await client.embed(path)
            except (EsamError, OSError, ValueError) as exc:
                failures.append({"path": str(path), "error": str(exc)})
                progress.update(failed=True)
                return
        uploaded += result.uploaded
        encoded += result.uploaded and not result.cached
        progress.update(hit=not result.uploaded)

    async with AsyncEsamClient(url, api_key=api_key) as client:
        await asyncio.gather(*(one(client, path) for path in paths))
    progress.finish()
    seconds = time.monotonic() - progress.started
    return {
        "images": len(paths),
        "already_cached": progress.hits,
        "uploaded": uploaded,
        "encoded": encoded,
        "failed": failures,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(paths) / max(seconds, 1e-9), 2),
    }


def _numbers(text: str, count: Sequence[int], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        message = f"{what}: numbers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f"{what}: {' or '.join(map(str, count))} numbers")
    return values


def _point(text: str) -> list[float]:
    return _numbers(text, (2, 3), "--point x,y[,label]")


def _box(text: str) -> list[float]:
    return _numbers(text, (4,), "--box x0,y0,x1,y1")


def coco(path: Path, width: int, height: int, masks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """A COCO results file: the image, one ``annotations`` entry per mask (RLE as sent)."""
    annotations = [
        {"id": n, "image_id": 1, "category_id": 1, **mask} for n, mask in enumerate(masks, 1)
    ]
    return {
        "images": [{"id": 1, "file_name": path.name, "width": width, "height": height}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }


def _write(out: Path | None, document: dict[str, Any]) -> None:
    text = json.dumps(document)
    if out is None:
        print(text)
    else:
        out.write_text(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esam", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ESAM_URL", "http://127.0.0.1:8080"))
    common.add_argument("--api-key", default=os.environ.get("ESAM_API_KEY"))
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", parents=[common], help="precompute embeddings")
    embed.add_argument("paths", nargs="+", help="image files, folders, globs")
    embed.add_argument("--concurrency", type=int, default=8)
    segment = commands.add_parser("segment", parents=[common], help="masks for one prompt")
    segment.add_argument("image", type=Path)
    segment.add_argument("--point", type=_point, action="append", default=[])
    segment.add_argument("--box", type=_box)
    segment.add_argument("--single", action="store_true", help="one candidate, not three")
    segment.add_argument("--out", type=Path, help="COCO JSON (default: stdout)")
    every = commands.add_parser("everything", parents=[common], help="every object")
    every.add_argument("image", type=Path)
    every.add_argument("--points-per-side", type=int)
    every.add_argument("--pred-iou-thresh", type=float)
    every.add_argument("--stability-score-thresh", type=float)
    every.add_argument("--min-mask-region-area", type=int)
    every.add_argument("--crop-n-layers", type=int)
    every.add_argument("--out", type=Path, help="COCO JSON (default: stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "embed":
            paths = image_paths(args.paths)
            summary = asyncio.run(embed_all(paths, args.url, args.api_key, args.concurrency))
            print(json.dumps(summary))
            return 1 if summary["failed"] or not paths else 0
        with EsamClient(args.url, api_key=args.api_key) as client:
            if args.command == "segment":
                if not args.point and args.box is None:
                    raise SystemExit("esam segment: give --point and/or --box")
                points = [(p[0], p[1]) for p in args.point]
                labels = [int(p[2]) if len(p) == 3 else 1 for p in args.point]
                box = None if args.box is None else tuple(args.box)
                prompt = Prompt(points=points, labels=labels, box=box)
                result = client.segment([prompt], image=args.image, multimask=not args.single)
                masks = (
                    {"segmentation": c.rle, "area": c.area, "bbox": list(c.bbox), "score": c.score}
                    for c in result.results[0]
                )
                _write(args.out, coco(args.image, result.width, result.height, masks))
            else:
                names = [
                    "points_per_side",
                    "pred_iou_thresh",
                    "stability_score_thresh",
                    "min_mask_region_area",
                    "crop_n_layers",
                ]
                params = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
                found = client.everything(image=args.image, **params)
                masks = (
                    {
                        "segmentation": m.rle,
                        "area": m.area,
                        "bbox": list(m.bbox),
                        "score": m.predicted_iou,
                        "stability_score": m.stability_score,
                        "point": list(m.point),
                    }
                    for m in found.masks
                )
                _write(args.out, coco(args.image, found.width, found.height, masks))
    except (EsamError, OSError) as exc:
        print(f"esam {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
