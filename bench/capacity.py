"""Capacity model: GPUs, gateway replicas, Redis memory and bandwidth for a target load.

The model is ``devtools/capacity.py``; ``docs/capacity.md`` explains it.

    python bench/capacity.py                        # the table: 1k / 10k / 100k annotators, A100 / H100
    python bench/capacity.py --annotators 2500 --gpu H100 --seconds-per-image 45
    python bench/capacity.py --check                # measure unit costs here, predict a bench/load.py
                                                    # run, run it, compare (≈ 2 minutes on 2 cores)
    python bench/capacity.py --measure --image-size 1920x1080   # decoder core-seconds per prompt

``--check`` and ``--measure`` start the local stack (local Triton on the CPU,
one gateway, the Redis at ``--redis-url``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import random
import tempfile
from pathlib import Path

import httpx
import redis

from devtools.benchmarking import drive
from devtools.capacity import (
    RECORD_BYTES,
    REDIS_BYTES_PER_EMBEDDING,
    GiB,
    Plan,
    UnitCosts,
    Workload,
    plan,
    saturated_opens_per_s,
)
from devtools.loadgen import LoadConfig, jpeg_image, random_prompt, run_load
from devtools.loadgen import plan as load_plan
from devtools.stack import local_stack

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(os.environ.get("ESAM_FIXTURES_DIR", REPO.parent / "shared" / "fixtures"))
CHECKPOINT = FIXTURE / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"

#: EfficientSAM-Ti encoder images/s per GPU. NOT measured (no GPU lent yet): the
#: 30 %-MFU estimate for a fused-attention encoder (../shared/docs/gpu-serving.md §4).
#: Replace with bench/gpu.sh's figure once it has run.
ENCODER_IMAGES_PER_S = {"A100": 457.0, "H100": 1450.0}
#: gateway core-seconds per /segment prompt at 1920x1080, measured on the 2-core
#: development machine with `--measure --image-size 1920x1080` (random weights: noisy
#: masks make RLE dearer than real ones, so this is an upper bound).
DECODE_CORE_S = 0.277
#: the same with ESAM_DECODER=triton: 4.55 ms, measured by bench/clicks.py against a
#: stand-in decoder that answers compact masks (random weights' speckle masks cost 58 ms,
#: all of it per run of the RLE)
TRITON_DECODE_CORE_S = 0.00455
#: prompts/s one GPU decodes with efficientsam_decoder. NOT measured (no GPU lent yet):
#: issue #23's goal for an H100 (30,000), a third of it for an A100. Replace with
#: bench/gpu.sh's decoder figure once it has run.
DECODER_PROMPTS_PER_S = {"A100": 10_000.0, "H100": 30_000.0}
SIZES = (1_000, 10_000, 100_000)
JPEG = {"Content-Type": "image/jpeg"}


def costs_for(gpu: str, args: argparse.Namespace) -> UnitCosts:
    on_gpu = args.decoder == "triton"
    default_core_s = TRITON_DECODE_CORE_S if on_gpu else DECODE_CORE_S
    return UnitCosts(
        gpu=gpu,
        encoder_images_per_s=args.encoder_images_per_s or ENCODER_IMAGES_PER_S[gpu],
        decode_core_s=args.decode_core_s or default_core_s,
        decoder_gpu_prompts_per_s=DECODER_PROMPTS_PER_S[gpu] if on_gpu else 0.0,
        cores_per_gateway=args.cores_per_gateway,
        utilisation=args.utilisation,
        embedding_bytes=RECORD_BYTES[args.embedding_dtype],
        redis_bytes_per_embedding=REDIS_BYTES_PER_EMBEDDING[args.embedding_dtype],
    )


def workload_for(annotators: int, args: argparse.Namespace) -> Workload:
    return Workload(
        annotators=annotators,
        seconds_per_image=args.seconds_per_image,
        prompts_per_image=args.prompts_per_image,
        revisit_fraction=args.revisit_fraction,
        keep_s=args.keep_s,
        redis_reads_per_prompt=args.redis_reads_per_prompt,
    )


def table(plans: list[Plan]) -> None:
    print(
        "| annotators | GPU | encodes/s | prompts/s | GPUs | gateway pods (cores) | "
        "Redis memory | Redis nodes (memory / network) | Redis traffic | GPU egress | binds first |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in plans:
        w, c, d = p.workload, p.costs, p.demand
        pods = p.units("gateway CPU")
        print(
            f"| {w.annotators:,} | {c.gpu} | {w.encodes_per_s:,.0f} | {w.prompts_per_s:,.0f} | "
            f"{p.units('GPU')} | {pods:,} ({pods * c.cores_per_gateway:,}) | "
            f"{d.redis_bytes / GiB:,.0f} GiB | {p.redis_nodes} ({p.units('redis memory')} / "
            f"{p.units('redis network')}) | {d.redis_bytes_per_s * 8 / 1e9:,.1f} Gbit/s | "
            f"{d.gpu_egress_bytes_per_s * 8 / 1e9:,.1f} Gbit/s | {p.binding.name} |"
        )


async def measure(
    client: httpx.AsyncClient, size: tuple[int, int], *, images: int, prompts: int
) -> tuple[float, float]:
    """(encoder images/s through /embed, /segment prompts/s), each with the machine saturated."""
    width, height = size
    warm = jpeg_image(10_000_000, size)  # first calls load lazily: keep them out of the figures
    image_id = (
        (await client.post("/embed", content=warm, headers=JPEG))
        .raise_for_status()
        .json()["image_id"]
    )
    rng = random.Random(7)

    async def segment(_: int) -> None:
        body = {"image_id": image_id, "prompts": [random_prompt(rng, width, height)]}
        (await client.post("/segment", json=body)).raise_for_status()

    await drive(segment, 4, 4)
    seeds = [20_000_000 + i for i in range(images)]

    async def embed(i: int) -> None:
        (
            await client.post("/embed", content=jpeg_image(seeds[i], size), headers=JPEG)
        ).raise_for_status()

    embed_wall, _ = await drive(embed, images, 4)
    segment_wall, _ = await drive(segment, prompts, 4)
    return images / embed_wall, prompts / segment_wall


async def run_stack(args: argparse.Namespace) -> None:
    size = tuple(int(v) for v in args.image_size.split("x"))
    assert len(size) == 2
    cores = float(os.cpu_count() or 1)
    with (
        tempfile.TemporaryDirectory() as workdir,
        local_stack(
            Path(workdir),
            args.checkpoint,
            redis_url=args.redis_url,
            embedding_dtype=args.embedding_dtype,
        ) as stack,
    ):
        gateway = stack.gateways[0]
        async with httpx.AsyncClient(base_url=gateway.url, timeout=600) as client:
            encoder_rate, prompt_rate = await measure(
                client, (size[0], size[1]), images=args.measure_images, prompts=args.measure_prompts
            )
            print(
                f"# measured on {platform.machine()}, {cores:.0f} cores, {size[0]}x{size[1]} JPEGs: "
                f"encoder {encoder_rate:.3f} images/s through /embed (local Triton, CPU); "
                f"/segment {prompt_rate:.2f} prompts/s = {cores / prompt_rate:.3f} core-s per prompt"
            )
            if not args.check:
                return
            config = LoadConfig(
                annotators=args.annotators or 8,
                images_per_annotator=args.images,
                image_size=(size[0], size[1]),
                deadline_s=1800,
                seed=3,
            )
            visits = [v for annotator in load_plan(config) for v in annotator]
            opens = len(visits)
            new = sum(not v.revisit for v in visits)
            prompts = sum(len(v.prompts) for v in visits)
            # the load's own mix, fixed by its seed before it runs; one gateway: its L1 holds them all
            workload = Workload(
                annotators=config.annotators,
                prompts_per_image=prompts / opens,
                revisit_fraction=1 - new / opens,
                redis_reads_per_prompt=0.0,
            )
            costs = UnitCosts(
                gpu="local CPU",
                encoder_images_per_s=encoder_rate,  # through /embed: includes the upload's cost
                decode_core_s=cores / prompt_rate,
                upload_core_s=0.0,
            )
            predicted_opens = saturated_opens_per_s(workload, costs, cores)
            predicted_wall = opens / predicted_opens
            predicted_rps = (new + prompts) / predicted_wall
            result = await run_load(client, config)
            measured_rps = len(result.samples) / result.wall_s
            print(
                f"# bench/load.py's load, {config.annotators} annotators x {config.images_per_annotator} "
                f"images: {opens} opens, {new} new images, {prompts} prompts; "
                f"{len(result.failed)} failed, {len(result.unexpected)} unexpected 4xx"
            )
            print("| figure | predicted | measured | measured / predicted |")
            print("| --- | --- | --- | --- |")
            print(
                f"| throughput, requests/s | {predicted_rps:.2f} | {measured_rps:.2f} | "
                f"{measured_rps / predicted_rps:.2f} |"
            )
            print(
                f"| wall, s | {predicted_wall:.1f} | {result.wall_s:.1f} | "
                f"{result.wall_s / predicted_wall:.2f} |"
            )
        r = redis.Redis.from_url(args.redis_url)
        try:
            keys = list(r.scan_iter(f"{stack.key_prefix}:emb:*", count=1000))
            used = sum(int(r.memory_usage(k) or 0) for k in keys)
            # the run's new images + the measuring images + the warm-up image
            cached = new + args.measure_images + 1
            each = REDIS_BYTES_PER_EMBEDDING[args.embedding_dtype]
            print(
                f"| Redis memory of the run's embeddings ({args.embedding_dtype}) | "
                f"{cached * each / 1e6:.1f} MB ({cached} images) | "
                f"{used / 1e6:.1f} MB ({len(keys)} keys) | "
                f"{used / (cached * each):.2f} |"
            )
            for key in keys:
                r.unlink(key)
        finally:
            r.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=None, help="one plan (default: table)")
    parser.add_argument("--gpu", choices=sorted(ENCODER_IMAGES_PER_S), default="H100")
    parser.add_argument("--encoder-images-per-s", type=float, default=None)
    parser.add_argument(
        "--decoder",
        choices=("local", "triton"),
        default="local",
        help="where clicks are decoded: the gateway's CPU, or the GPU (ESAM_DECODER=triton)",
    )
    parser.add_argument(
        "--decode-core-s",
        type=float,
        default=None,
        help=f"gateway core-seconds per prompt (default: {DECODE_CORE_S} local, "
        f"{TRITON_DECODE_CORE_S} triton)",
    )
    parser.add_argument(
        "--embedding-dtype",
        choices=sorted(REDIS_BYTES_PER_EMBEDDING),
        default="int8",
        help="ESAM_EMBEDDING_DTYPE: bytes per cached embedding (and the --check stack's)",
    )
    parser.add_argument("--cores-per-gateway", type=int, default=4)
    parser.add_argument("--utilisation", type=float, default=0.7)
    defaults = Workload(annotators=1)
    for field in dataclasses.fields(Workload):
        if field.name in ("annotators", "image_bytes", "response_bytes"):
            continue
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=float, default=getattr(defaults, field.name)
        )
    parser.add_argument("--check", action="store_true", help="predict a local load run and run it")
    parser.add_argument("--measure", action="store_true", help="measure unit costs here")
    parser.add_argument("--image-size", default="640x480")
    parser.add_argument("--images", type=int, default=4, help="--check: images per annotator")
    parser.add_argument("--measure-images", type=int, default=8)
    parser.add_argument("--measure-prompts", type=int, default=40)
    parser.add_argument(
        "--checkpoint", default=str(CHECKPOINT) if CHECKPOINT.exists() else "random"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    if args.check or args.measure:
        asyncio.run(run_stack(args))
        return
    print(
        f"# workload: one image every {args.seconds_per_image:g} s per annotator, "
        f"{args.prompts_per_image:g} prompts per image, {args.revisit_fraction:.0%} revisits, "
        f"kept {args.keep_s:g} s, {args.redis_reads_per_prompt:g} Redis reads per prompt; "
        f"decoder: {args.decoder}, {args.embedding_dtype} embeddings "
        f"({REDIS_BYTES_PER_EMBEDDING[args.embedding_dtype] / (1 << 20):g} MiB in Redis), "
        f"{(args.decode_core_s or costs_for('H100', args).decode_core_s) * 1e3:.2f} gateway "
        f"core-ms per prompt, {args.cores_per_gateway} "
        f"cores per gateway pod, planned at {args.utilisation:.0%} utilisation"
    )
    sizes = [args.annotators] if args.annotators else list(SIZES)
    gpus = [args.gpu] if args.annotators else sorted(ENCODER_IMAGES_PER_S)
    table([plan(workload_for(n, args), costs_for(g, args)) for n in sizes for g in gpus])


if __name__ == "__main__":
    main()
