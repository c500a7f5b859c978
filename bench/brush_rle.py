"""Label Studio brush RLE of a 12 MP mask: the vectorised encoder against label_studio_sdk's.

Two 4000×3000 masks: a smooth disc (a typical object) and blobs with ragged edges (a
hard case: many short runs). Ours runs here; label_studio_sdk's ``brush.mask2rle`` (the
baseline) runs in Label Studio's venv (build/label-studio, installed on first use) on
the same masks, each timed in its own process, best of N. The outputs are compared
byte for byte. Goal: < 100 ms per 12 MP mask.

    python bench/brush_rle.py            # best of 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from devtools.label_studio import ensure_venv
from service.gateway.labelstudio.brush_rle import encode_brush_rle

BASELINE = """
import json, sys, time
import numpy as np
from label_studio_sdk.converter import brush
masks = np.load(sys.argv[1])
repeats = int(sys.argv[2])
out = {}
for name in masks.files:
    mask = masks[name].astype(np.uint8) * 255
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        rle = brush.mask2rle(mask)
        best = min(best, time.perf_counter() - start)
    out[name] = {"seconds": best, "rle": [int(v) for v in rle]}
print(json.dumps(out))
"""


def masks() -> dict[str, np.ndarray]:
    height, width = 3000, 4000
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - 1500) ** 2 + (xx - 2000) ** 2 < 1100**2
    rng = np.random.default_rng(0)
    coarse = rng.random((height // 40, width // 40))
    blobs = np.kron(coarse, np.ones((40, 40))) + rng.random((height, width)) * 0.15 > 0.6
    return {"disc": disc, "ragged blobs": blobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = masks()
    python = ensure_venv()
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "masks.npz"
        np.savez(path, **{name.replace(" ", "_"): m for name, m in cases.items()})
        done = subprocess.run(
            [str(python), "-c", BASELINE, str(path), str(min(args.repeats, 2))],
            capture_output=True,
            text=True,
            check=True,
        )
    baseline = json.loads(done.stdout)
    print(
        f"# measured on {platform.machine()}, {os.cpu_count()} cores, 4000x3000 masks, "
        f"best of {args.repeats} (baseline: best of {min(args.repeats, 2)})"
    )
    for name, mask in cases.items():
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            ours = encode_brush_rle(mask)
            best = min(best, time.perf_counter() - start)
        theirs = baseline[name.replace(" ", "_")]
        assert ours == theirs["rle"], f"{name}: the encodings differ"
        runs = int(np.count_nonzero(mask.ravel()[1:] != mask.ravel()[:-1])) + 1
        print(
            f"{name:>13}: {runs:>7} runs, {len(ours):>7} bytes of RLE; "
            f"vectorised {best * 1000:.1f} ms, label_studio_sdk {theirs['seconds'] * 1000:.0f} ms "
            f"({theirs['seconds'] / best:.0f}x), identical"
        )


if __name__ == "__main__":
    main()
