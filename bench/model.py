"""Encoder and decoder speed of the project's model against a float32 baseline.

The baseline is the same network with the reference's explicit-softmax
attention (``devtools.benchmarking``), run in float32 on the same machine in the
same process; the two are timed alternately so that machine noise hits both.

    python bench/model.py                       # CPU: Ti, encoder batch 1, decoder 1 and 8 prompts
    python bench/model.py --device cuda --precision bf16 --batch 32   # GPU figures

Prints one line per measurement with the median time and the speed-up ratio.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
from collections.abc import Callable

import torch

from devtools.benchmarking import as_baseline, sync
from service.model import Precision, random_model


def time_pair(
    ours: Callable[[], object], base: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float]:
    """Median seconds of each, measured alternately after one warm-up call."""
    ours(), base()
    t_ours: list[float] = []
    t_base: list[float] = []
    for _ in range(repeats):
        for fn, sink in ((ours, t_ours), (base, t_base)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            sink.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=("ti", "s"), default="ti")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--batch", type=int, default=1, help="encoder batch size")
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    precision: Precision = args.precision
    torch.set_grad_enabled(False)
    model = random_model(args.variant).to(device)
    baseline = as_baseline(model)
    pixels = torch.rand(args.batch, 3, 1024, 1024, device=device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"# EfficientSAM-{args.variant} on {device.type} ({name or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"ours: SDPA {precision}; baseline: explicit softmax fp32"
    )

    ours_s, base_s = time_pair(
        lambda: model.embed(pixels, precision),
        lambda: baseline.embed(pixels, "fp32"),
        device,
        args.repeats,
    )
    print(
        f"encoder batch {args.batch}: ours {ours_s * 1e3:.1f} ms "
        f"({args.batch / ours_s:.1f} img/s), baseline {base_s * 1e3:.1f} ms "
        f"({args.batch / base_s:.1f} img/s), speed-up {base_s / ours_s:.2f}x"
    )

    embedding = model.embed(pixels[:1])
    for n in args.prompts:
        points = torch.rand(n, 2, 2, device=device) * 1024
        labels = torch.ones(n, 2, device=device)
        ours_s, base_s = time_pair(
            functools.partial(model.decode, embedding, points, labels),
            functools.partial(baseline.decode, embedding, points, labels),
            device,
            args.repeats * 4,
        )
        print(
            f"decoder {n} prompt(s): ours {ours_s * 1e3:.1f} ms, baseline {base_s * 1e3:.1f} ms, "
            f"speed-up {base_s / ours_s:.2f}x"
        )


if __name__ == "__main__":
    main()
