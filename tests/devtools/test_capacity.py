"""The capacity model's arithmetic, against values worked out by hand."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.capacity import UnitCosts, Workload, demand, plan, saturated_opens_per_s

REPO = Path(__file__).resolve().parents[2]

WORKLOAD = Workload(
    annotators=600,
    seconds_per_image=60,
    prompts_per_image=10,
    revisit_fraction=0.5,
    keep_s=1000,
    image_bytes=1000,
    response_bytes=100,
    redis_reads_per_prompt=0.5,
)
COSTS = UnitCosts(
    gpu="test",
    encoder_images_per_s=10,
    decode_core_s=0.1,
    upload_core_s=0.02,
    embedding_bytes=1000,
    encoder_output_bytes=1000,
    redis_bytes_per_embedding=2000,
    cores_per_gateway=4,
    redis_node_memory_bytes=5e6,
    redis_node_bandwidth=50_000,
    gpu_node_bandwidth=80_000,
    gpus_per_node=8,
    utilisation=0.5,
)


def test_traffic_from_the_workload() -> None:
    # 600 annotators / 60 s = 10 opens/s; half are revisits; 10 prompts each
    assert WORKLOAD.opens_per_s == pytest.approx(10)
    assert WORKLOAD.encodes_per_s == pytest.approx(5)
    assert WORKLOAD.prompts_per_s == pytest.approx(100)


def test_demand_per_resource() -> None:
    d = demand(WORKLOAD, COSTS)
    assert d.gpu_s == pytest.approx(0.5)  # 5 encodes/s at 10 images/s
    assert d.gateway_core_s == pytest.approx(10.1)  # 100 × 0.1 + 5 × 0.02
    assert d.redis_bytes == pytest.approx(5 * 1000 * 2000 * 1.15)  # encodes × keep × bytes × 1.15
    assert d.redis_bytes_per_s == pytest.approx((5 + 100 * 0.5) * 1000)
    assert d.gpu_egress_bytes_per_s == pytest.approx(5 * 1000)
    assert d.gpu_ingress_bytes_per_s == pytest.approx(5 * 1000)
    assert d.client_bytes_per_s == pytest.approx(10 * 1000 + 100 * 100)


def test_units_at_the_target_utilisation_and_the_binding_resource() -> None:
    p = plan(WORKLOAD, COSTS)
    assert p.units("GPU") == 1  # 0.5 busy / 0.5
    assert p.units("gateway CPU") == 6  # 10.1 / 4 = 2.525 per pod / 0.5 = 5.05
    assert p.units("redis memory") == 5  # 11.5 MB / 5 MB = 2.3 / 0.5 = 4.6
    assert p.units("redis network") == 3  # 55 kB/s / 50 kB/s = 1.1 / 0.5 = 2.2
    assert p.units("GPU node network") == 1  # 5 kB/s of 10 kB/s per GPU
    assert p.redis_nodes == 5
    assert p.binding.name == "gateway CPU"  # 2.525 units of demand, the most


def test_a_slow_gpu_binds_when_clicks_are_cheap() -> None:
    costs = UnitCosts(gpu="slow", encoder_images_per_s=1, decode_core_s=0.001)
    p = plan(WORKLOAD, costs)
    assert p.units("GPU") == 8  # 5 encodes/s at 1 image/s = 5 GPUs busy / 0.7 = 7.1
    assert p.binding.name == "GPU"


def test_an_exact_fit_does_not_round_up() -> None:
    costs = UnitCosts(gpu="x", encoder_images_per_s=10, decode_core_s=0.1, utilisation=0.5)
    assert plan(WORKLOAD, costs).units("GPU") == 1  # 0.5 / 0.5 = 1.0 exactly


def test_one_shared_machine_adds_encoder_and_decoder_time() -> None:
    # per open: 10 prompts × 0.1 + 0.02 upload + half an encode at 0.5 images/s
    # on 2 cores (4 core-s each)
    costs = UnitCosts(gpu="cpu", encoder_images_per_s=0.5, decode_core_s=0.1, upload_core_s=0.02)
    opens = saturated_opens_per_s(WORKLOAD, costs, cores=2)
    assert opens == pytest.approx(2 / 3.02)


def test_the_script_prints_the_plan_for_the_stated_constants() -> None:
    out = subprocess.run(
        [sys.executable, "bench/capacity.py", "--annotators", "1000", "--gpu", "H100"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith("| 1,000 | H100"))
    # 1000 / 60 × 12 = 200 prompts/s × 0.277 core-s + 13.3 encodes/s × 0.019 = 55.65 cores;
    # / 4 per pod / 0.7 = 19.9 → 20 pods, 80 cores; 13.3 encodes/s on one H100
    assert "| 13 | 200 | 1 | 20 (80) |" in row
    assert row.endswith("| gateway CPU |")


def test_clicks_decoded_on_the_gpu_cost_gpu_time_and_little_gateway_cpu() -> None:
    # 600 annotators / 60 s = 10 opens/s; 5 encodes/s, 100 prompts/s
    on_gpu = dataclasses.replace(COSTS, decode_core_s=0.001, decoder_gpu_prompts_per_s=200)
    need = demand(WORKLOAD, on_gpu)
    assert need.gpu_s == pytest.approx(5 / 10 + 100 / 200)  # encoder 0.5 + decoder 0.5 GPUs
    assert need.gateway_core_s == pytest.approx(100 * 0.001 + 5 * 0.02)  # 0.2 cores
    assert plan(WORKLOAD, on_gpu).units("GPU") == 2  # 1.0 GPU-s/s at 50 % utilisation
    # the gateway's decoder: no GPU time for clicks
    assert demand(WORKLOAD, COSTS).gpu_s == pytest.approx(0.5)
