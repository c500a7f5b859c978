"""The model repository: configs parse, agree with each other and with the ONNX export."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from devtools.triton_config import (
    DTYPES,
    ENSEMBLE,
    MODEL,
    PREPROCESS,
    SOURCE_REPOSITORY,
    cpu_config,
    cpu_configs,
    gpu_configs,
)
from service.model import EfficientSam
from service.model.onnx_export import export_encoder
from tests.conftest import REPO_ROOT, Fixture
from tests.services import free_port

MODELS = ["efficientsam_encoder", "efficientsam_encoder_onnx"]


def load_config(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    return config


@pytest.mark.parametrize("name", MODELS)
def test_production_configs(name: str) -> None:
    config = load_config((SOURCE_REPOSITORY / name / "config.pbtxt").read_text())
    assert config.name == name
    assert [i.name for i in config.input] == ["pixels"]
    assert list(config.input[0].dims) == [3, 1024, 1024]
    assert [o.name for o in config.output] == ["embeddings"]
    assert list(config.output[0].dims) == [256, 64, 64]
    assert config.max_batch_size >= 8
    assert max(config.dynamic_batching.preferred_batch_size) <= config.max_batch_size
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert not list((SOURCE_REPOSITORY / name).rglob("*.pt"))  # weights are never in git


def test_the_ensemble_takes_bytes_and_its_steps_fit_together() -> None:
    ensemble = load_config((SOURCE_REPOSITORY / ENSEMBLE / "config.pbtxt").read_text())
    preprocess = load_config((SOURCE_REPOSITORY / PREPROCESS / "config.pbtxt").read_text())
    encoder = load_config((SOURCE_REPOSITORY / MODEL / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble"
    assert [(i.name, i.data_type, list(i.dims)) for i in ensemble.input] == [
        ("image", mc.TYPE_STRING, [1])
    ]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [PREPROCESS, MODEL]
    outputs = {o.name: o for o in ensemble.output}
    assert outputs["embeddings"].data_type == encoder.output[0].data_type == mc.TYPE_FP16
    assert outputs["size"].data_type == mc.TYPE_INT32
    pixels = next(o for o in preprocess.output if o.name == "pixels")
    assert pixels.data_type == encoder.input[0].data_type  # the tensor between the two steps
    assert list(pixels.dims) == list(encoder.input[0].dims)
    assert ensemble.max_batch_size <= min(preprocess.max_batch_size, encoder.max_batch_size)
    # on a GPU the preprocessed tensor stays on the device into the encoder
    assert encoder.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert [g.kind for g in preprocess.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]


def test_gpu_configs_keep_the_ensemble_and_clip_only_batching() -> None:
    """What ``bench/gpu.sh`` serves: the production configs, for a checkpoint and a batch
    size. (The ensemble once lost its steps here: Triton refused to start on the H200.)"""
    configs = {
        name: load_config(text)
        for name, text in gpu_configs(checkpoint="/w.pt", max_batch=4).items()
    }
    ensemble = configs[ENSEMBLE]
    assert ensemble.WhichOneof("scheduling_choice") == "ensemble_scheduling"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [PREPROCESS, MODEL]
    for name in (PREPROCESS, MODEL):
        config = configs[name]
        assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
        assert max(config.dynamic_batching.preferred_batch_size, default=0) <= 4
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert configs[MODEL].parameters["checkpoint"].string_value == "/w.pt"
    assert {c.max_batch_size for c in configs.values()} == {4}


@pytest.mark.parametrize("wire", ["fp32", "fp16"])
def test_cpu_configs_of_the_pipeline_agree(wire: str) -> None:
    configs = {
        name: load_config(text)
        for name, text in cpu_configs(wire=wire, output="fp32", max_batch=4).items()
    }
    assert set(configs) == {ENSEMBLE, PREPROCESS, MODEL}
    pixels = next(o for o in configs[PREPROCESS].output if o.name == "pixels")
    assert pixels.data_type == configs[MODEL].input[0].data_type == DTYPES[wire]
    embeddings = next(o for o in configs[ENSEMBLE].output if o.name == "embeddings")
    assert embeddings.data_type == configs[MODEL].output[0].data_type == mc.TYPE_FP32
    for name in (PREPROCESS, MODEL):
        assert [g.kind for g in configs[name].instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert {c.max_batch_size for c in configs.values()} == {4}


def test_cpu_configuration_is_derived_not_duplicated() -> None:
    config = load_config(
        cpu_config(wire="fp32", output="fp32", max_batch=4, queue_delay_us=100, checkpoint="/w.pt")
    )
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert config.input[0].data_type == mc.TYPE_FP32
    assert config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.parameters["checkpoint"].string_value == "/w.pt"
    assert config.parameters["precision"].string_value == "fp32"
    assert config.backend == "python"
    assert sorted(p.name for p in (SOURCE_REPOSITORY / "efficientsam_encoder").rglob("*.py")) == [
        "model.py"
    ]


@pytest.mark.slow
def test_onnx_export_fits_the_onnx_model_config(
    fixture_model: EfficientSam, tmp_path: Path, expected: dict[str, np.ndarray]
) -> None:
    config = load_config(
        (SOURCE_REPOSITORY / "efficientsam_encoder_onnx" / "config.pbtxt").read_text()
    )
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        export_encoder(fixture_model, path, input_dtype="fp16")
    graph = onnx.load(str(path)).graph
    (inp,) = graph.input
    (out,) = graph.output
    assert (inp.name, out.name) == ("pixels", "embeddings")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert config.input[0].data_type == mc.TYPE_FP16
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert config.output[0].data_type == mc.TYPE_FP32

    pixels = torch.rand(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)).half()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (embeddings,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.inference_mode():
        reference = fixture_model.embed(pixels.float()).numpy()
    assert np.abs(embeddings - reference).max() <= 1e-3


@pytest.mark.slow
def test_missing_checkpoint_fails_to_load_with_a_clear_message(tmp_path: Path) -> None:
    from devtools.triton import LocalTriton, TritonNotAvailableError
    from tests.services import free_port

    server = LocalTriton(
        tmp_path,
        str(tmp_path / "absent.pt"),
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        log_path=tmp_path / "tritonserver.log",
    )
    with pytest.raises(TritonNotAvailableError):
        server.start(timeout_s=120)
    log = (tmp_path / "tritonserver.log").read_text()
    assert "absent.pt' not found" in log
    assert "ESAM_CHECKPOINT" in log


@pytest.mark.slow
def test_the_shipped_repository_starts_with_the_image_command(
    fixture: Fixture, tmp_path: Path
) -> None:
    """What the image does (docker/triton-serve.sh on model_repository/ with its derived CPU
    configs) starts on a fresh checkout, where efficientsam_encoder_onnx has no model.onnx."""
    import shutil
    import subprocess
    import time

    import httpx

    from devtools.triton import prepare_backends, server_environment, tritonserver_binary
    from devtools.triton_config import main as write_cpu_configs

    repository = tmp_path / "models"
    shutil.copytree(SOURCE_REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    assert not list((repository / "efficientsam_encoder_onnx").rglob("*.onnx"))
    write_cpu_configs(["--repository", str(repository)])  # as the Dockerfile's RUN step
    http_port = free_port()
    env = {
        **server_environment(),
        "TRITONSERVER": str(tritonserver_binary()),
        "TRITON_MODEL_REPOSITORY": str(repository),
        "ESAM_CHECKPOINT": str(fixture.checkpoint),
    }
    log = (tmp_path / "triton.log").open("wb")
    process = subprocess.Popen(
        [
            str(REPO_ROOT / "docker" / "triton-serve.sh"),
            "--model-config-name=cpu",
            f"--backend-directory={prepare_backends(tmp_path)}",
            f"--http-port={http_port}",
            f"--grpc-port={free_port()}",
            f"--metrics-port={free_port()}",
            "--http-address=127.0.0.1",
            "--allow-gpu-metrics=false",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = (
                    httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200
                )
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.5)
        assert ready, (tmp_path / "triton.log").read_text()[-3000:]
        index = httpx.post(f"http://127.0.0.1:{http_port}/v2/repository/index").json()
        states = {m["name"]: m.get("state") for m in index}
        assert states[ENSEMBLE] == states[PREPROCESS] == states[MODEL] == "READY"
        assert states["efficientsam_decoder"] == "READY"  # the clicks' model, loaded too
        assert states.get("efficientsam_encoder_onnx") != "READY"  # listed, never loaded
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log.close()
