"""Peak memory of one piece of work, measured in a fresh Python process (Linux).

``python -m devtools.peak_memory MODE PATH [--concurrency N] [--bound B]`` imports
what the work needs, runs a small warm-up, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs the work and prints one JSON line:
``{"rss_before_mb", "peak_mb", "growth_mb", "decoded_uint8_mb"}``. A fresh process per
measurement: a test process that has already run other tests says nothing about
what one request costs.

Modes:
* ``current``: ``load_for_model`` (decode once, banded resize) of ``--concurrency`` images
  on a pool of ``--bound`` threads (the gateway's ``ESAM_MAX_CONCURRENT_IMAGE_DECODES``);
* ``full-float``: the earlier pipeline as the baseline (a whole uint8 array, then a float32
  copy of the full-resolution image, then the resize), all ``--concurrency`` at once;
* ``header``: only ``read_header`` (what the gateway does before it admits an image).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def status_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM, ...) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _run(mode: str, data: bytes, concurrency: int, bound: int) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from service.core.allocator import return_large_buffers_to_os
    from service.errors import EsamError
    from service.model.preprocess import decode_image, load_for_model, read_header

    if mode != "full-float":  # the earlier pipeline ran without it
        return_large_buffers_to_os()  # as the gateway does at start

    def full_float(blob: bytes) -> torch.Tensor:
        rgb = decode_image(blob)
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float().div_(255.0)
        return F.interpolate(x, size=(1024, 1024), mode="bilinear", align_corners=False)[0]

    def current(blob: bytes) -> object:
        return load_for_model(blob)

    def header_only(blob: bytes) -> object:
        try:
            return read_header(blob, 50_000_000)  # the gateway's default pixel limit
        except EsamError as exc:  # a refusal is an outcome too (decompression bombs)
            return exc.code

    works: dict[str, Callable[[bytes], object]] = {
        "current": current,
        "full-float": full_float,
        "header": header_only,
    }
    work = works[mode]
    workers = bound if mode == "current" else concurrency  # the gateway's decode pool
    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # to read a bomb's size
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size  # stored size: enough for the bytes per pixel
        file_format = img.format
    Image.MAX_IMAGE_PIXELS = guard  # the work runs with Pillow's guard, as in the gateway
    tiny = io.BytesIO()
    Image.new("RGB", (64, 48)).save(tiny, format=file_format)
    with ThreadPoolExecutor(workers) as pool:
        # one-off costs (libraries' first use, each thread's allocator) are not per image
        list(pool.map(work, [tiny.getvalue()] * workers))
        before = status_mb("VmRSS")
        reset_peak()
        results = list(pool.map(work, [data] * concurrency))  # held, as while awaiting encode
        peak = status_mb("VmHWM")
    outcome = str(results[0]) if mode == "header" else "decoded"
    del results
    return {
        "mode": mode,
        "concurrency": concurrency,
        "bound": bound,
        "width": width,
        "height": height,
        "outcome": outcome,
        "rss_before_mb": round(before, 1),
        "peak_mb": round(peak, 1),
        "growth_mb": round(peak - before, 1),
        "decoded_uint8_mb": round(width * height * 3 / 2**20, 1),
    }


def photo_like(width: int, height: int, seed: int) -> Any:
    """A photo-like PIL image (gradients plus sensor noise): it compresses as photos do."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    planes = [(x + y) / 2, np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))]
    noisy = np.stack(planes, -1) + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def measure(mode: str, path: Path, *, concurrency: int = 1, bound: int = 2) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its JSON."""
    result = subprocess.run(  # noqa: S603 - our own module and arguments
        [
            sys.executable,
            "-m",
            "devtools.peak_memory",
            mode,
            str(path),
            "--concurrency",
            str(concurrency),
            "--bound",
            str(bound),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("current", "full-float", "header"))
    parser.add_argument("path", type=Path)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--bound", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(_run(args.mode, args.path.read_bytes(), args.concurrency, args.bound)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
