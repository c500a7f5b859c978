"""``esam``: precompute a dataset's embeddings, segment one image, or all of it.

    esam embed PATH... [--concurrency N]        files, folders, globs; - reads them from stdin
    esam segment IMAGE --point x,y[,label] ... [--box x0,y0,x1,y1] --out masks.json
    esam everything IMAGE --out coco.json [--points-per-side N] ...

The gateway's URL and API key come from ``ESAM_URL`` and ``ESAM_API_KEY`` (an explicit
``--url`` / ``--api-key`` wins). ``embed`` shows a progress bar with the time left on a
terminal (tqdm), prints a JSON summary and exits 1 when any image failed.
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

from tqdm import tqdm

from esam_client.clients import AsyncEsamClient, EsamClient
from esam_client.errors import EsamError
from esam_client.models import Prompt

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
DEFAULT_URL = "http://127.0.0.1:8080"
#: without a terminal (a pipe, a CI log): a plain line at most this often, and at the end
PLAIN_EVERY_S = 10.0


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
    """Progress on stderr: a tqdm bar with rate and time left on a terminal (one line,
    redrawn); elsewhere the same figures as a plain line every ``PLAIN_EVERY_S`` and at
    the end, so a pipe or a CI log gets a few lines, not thousands of redraws."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done, self.hits, self.failed = total, 0, 0, 0
        self.started = time.monotonic()
        self.live = self.stream.isatty()
        self._last_plain = self.started
        self._bar: tqdm[Any] | None = None
        if self.live:
            self._bar = tqdm(
                total=total, unit="img", desc="embed", file=self.stream, dynamic_ncols=True
            )

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def counts(self) -> str:
        return f"{self.hits} already cached, {self.failed} failed"

    def line(self) -> str:
        meter = tqdm.format_meter(
            self.done, self.total, time.monotonic() - self.started, unit="img", prefix="embed"
        )
        return f"{meter}  {self.counts()}"

    def update(self, *, hit: bool = False, failed: bool = False) -> None:
        self.done += 1
        self.hits += hit
        self.failed += failed
        if self._bar is not None:
            self._bar.set_postfix_str(self.counts(), refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S and self.done < self.total:
            self._last_plain = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            print(self.line(), file=self.stream, flush=True)


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

    # a precompute: bulk work, which never takes the share kept for annotators
    async with AsyncEsamClient(url, api_key=api_key, priority="bulk") as client:
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
    parser = argparse.ArgumentParser(
        prog="esam",
        description=__doc__.split("\n\n")[0],
        epilog="The URL and the API key are read from ESAM_URL and ESAM_API_KEY when the "
        "options are not given; keep the key in the environment: a key on the command line "
        "is visible to every user of the machine (ps, shell history).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("ESAM_URL", DEFAULT_URL),
        help=f"the gateway (default: $ESAM_URL, else {DEFAULT_URL}; this option wins)",
    )
    common.add_argument(
        "--api-key",
        default=os.environ.get("ESAM_API_KEY"),
        help="the gateway's API key (default: $ESAM_API_KEY; prefer the environment: a key "
        "given here shows in ps and the shell's history)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    embed = commands.add_parser(
        "embed",
        parents=[common],
        help="precompute embeddings (a second run sends nothing)",
        description="Upload every image the gateway does not hold yet, so that later "
        "clicks only run the decoder. Prints a JSON summary; exits 1 when any image failed.",
    )
    embed.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="image files, folders (searched recursively) or globs; - reads them from "
        "standard input, one per line",
    )
    embed.add_argument(
        "--from-file",
        type=Path,
        metavar="FILE",
        help="read more paths from FILE, one per line (for lists too long for a command line)",
    )
    embed.add_argument(
        "--concurrency", type=int, default=8, help="uploads in flight at once (default: 8)"
    )
    segment = commands.add_parser(
        "segment",
        parents=[common],
        help="masks for one prompt",
        description="Segment one image with one prompt (points and/or a box); writes the "
        "candidates as a COCO results file.",
    )
    segment.add_argument("image", type=Path, help="the image file")
    segment.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a point in pixels; label 1 foreground (default), 0 background; repeatable",
    )
    segment.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="a box in pixels")
    segment.add_argument("--single", action="store_true", help="one candidate, not three")
    segment.add_argument("--out", type=Path, help="COCO JSON (default: stdout)")
    every = commands.add_parser(
        "everything",
        parents=[common],
        help="every object",
        description="Segment everything in one image (SAM's automatic mask generation); "
        "writes the masks as a COCO results file. Unset options take the gateway's defaults.",
    )
    every.add_argument("image", type=Path, help="the image file")
    every.add_argument("--points-per-side", type=int, help="the point grid's size per side")
    every.add_argument(
        "--pred-iou-thresh", type=float, help="drop candidates with a lower predicted IoU"
    )
    every.add_argument(
        "--stability-score-thresh", type=float, help="drop candidates less stable than this"
    )
    every.add_argument(
        "--min-mask-region-area", type=int, help="remove holes and islands under this many pixels"
    )
    every.add_argument("--crop-n-layers", type=int, help="layers of crops (small objects)")
    every.add_argument("--out", type=Path, help="COCO JSON (default: stdout)")
    return parser


def listed_paths(arguments: Sequence[str], from_file: Path | None) -> list[str]:
    """The command line's paths, with ``-`` replaced by standard input's lines and
    ``--from-file``'s lines added (blank lines skipped)."""
    listed: list[str] = []
    for argument in arguments:
        if argument == "-":
            listed += [line.strip() for line in sys.stdin if line.strip()]
        else:
            listed.append(argument)
    if from_file is not None:
        listed += [line.strip() for line in from_file.read_text().splitlines() if line.strip()]
    return listed


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "embed":
            if not args.paths and args.from_file is None:
                raise SystemExit("esam embed: give PATH..., - (standard input) or --from-file")
            paths = image_paths(listed_paths(args.paths, args.from_file))
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
