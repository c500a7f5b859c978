"""Peak memory of decoding large images, before (full-resolution float32) and after (bands).

Each row is a fresh Python process (``devtools.peak_memory``): the growth of its
resident set from just before the images are decoded to its peak (the kernel's
``VmHWM``, reset first), the inputs for the encoder held as while awaiting encode.

    python bench/decode_memory.py            # writes build/bench/decode_memory.json
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from devtools.peak_memory import measure, photo_like

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "bench"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    png = OUT / "50mp.png"
    jpeg = OUT / "12mp.jpg"
    if not png.exists():
        photo_like(8660, 5773, seed=0).save(png, compress_level=6)
    if not jpeg.exists():
        photo_like(4240, 2832, seed=1).save(jpeg, quality=90)
    cases = [("50 MP PNG, 1 at a time", png, 1), ("12 MP JPEG, 8 concurrent", jpeg, 8)]
    rows = []
    print("| image | pipeline | decodes at once | growth MB | per concurrent decode | × uint8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, path, concurrency in cases:
        for mode, label in (("full-float", "before: float32 copy"), ("current", "after: bands")):
            result = measure(mode, path, concurrency=concurrency, bound=2)
            at_once = concurrency if mode == "full-float" else min(concurrency, 2)
            held = 12.0 * concurrency  # the [3, 1024, 1024] float32 inputs awaiting encode
            per_decode = (result["growth_mb"] - held) / at_once
            ratio = per_decode / result["decoded_uint8_mb"]
            rows.append({**result, "case": name, "per_decode_mb": round(per_decode, 1)})
            print(
                f"| {name} | {label} | {at_once} | {result['growth_mb']:.0f} | "
                f"{per_decode:.0f} MB | {ratio:.2f} |"
            )
    (OUT / "decode_memory.json").write_text(
        json.dumps({"machine": platform.platform(), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
