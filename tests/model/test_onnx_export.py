"""The ONNX export, run with onnxruntime on CPU, reproduces the fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from service.model import EfficientSam
from service.model.onnx_export import export_decoder, export_encoder
from service.model.preprocess import decode_image, resize_to_model
from service.model.prompts import prompts_to_arrays
from tests.conftest import Fixture
from tests.model.conformance import array_failures

pytestmark = pytest.mark.slow  # exports and measures the model: not in `make test-fast`


@pytest.fixture(scope="module")
def onnx_dir(fixture_model: EfficientSam, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    with torch.no_grad():
        export_encoder(fixture_model, out / "encoder.onnx")
        export_decoder(fixture_model, out / "decoder.onnx")
    return out


def test_encoder_matches_fixture_with_dynamic_batch(
    onnx_dir: Path, fixture: Fixture, expected: dict[str, np.ndarray]
) -> None:
    session = ort.InferenceSession(
        str(onnx_dir / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    pixels = resize_to_model(decode_image(fixture.image_path.read_bytes()))[None].numpy()
    assert [o.name for o in session.get_outputs()] == ["embeddings"]  # the Triton contract
    (one,) = session.run(None, {"pixels": pixels})
    assert array_failures({"image_embeddings": one}, expected) == []
    (two,) = session.run(None, {"pixels": np.concatenate([pixels, pixels[:, :, ::-1]])})
    assert two.shape == (2, 256, 64, 64)
    np.testing.assert_allclose(two[:1], one, atol=1e-4)


def test_decoder_matches_fixture_with_dynamic_prompts(
    onnx_dir: Path, fixture: Fixture, expected: dict[str, np.ndarray]
) -> None:
    session = ort.InferenceSession(
        str(onnx_dir / "decoder.onnx"), providers=["CPUExecutionProvider"]
    )
    height, width = fixture.meta["image_size_hw"]
    points, labels = prompts_to_arrays(fixture.prompts(), width, height)
    feeds = {"image_embeddings": expected["image_embeddings"], "points": points, "labels": labels}
    logits, iou = session.run(None, feeds)
    actual = {
        "low_res_logits_multimask": logits[None, :, 1:],
        "iou_multimask": iou[None, :, 1:],
        "low_res_logits_single": logits[None, :, :1],
        "iou_single": iou[None, :, :1],
    }
    assert array_failures(actual, expected) == []
    one_logits, _ = session.run(None, {**feeds, "points": points[:1], "labels": labels[:1]})
    np.testing.assert_allclose(one_logits[0], logits[0], atol=5e-4)


def attention_patterns(path: Path) -> list[tuple[str, str, str, str]]:
    """For each Softmax: (what feeds the first MatMul's operands, the Softmax's producer,
    its consumer). TensorRT fuses MatMul → Softmax → MatMul into one attention kernel only
    when Q or K (or both, by √scale) is scaled *before* the first MatMul."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def made_by(name: str) -> str:
        node = producer.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Squeeze"):
            node = producer.get(node.input[0])  # look through layout-only ops
        return node.op_type if node is not None else "input"

    found = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        scores = producer[node.input[0]]
        (after,) = consumers[node.output[0]]
        found.append(
            (made_by(scores.input[0]), made_by(scores.input[1]), scores.op_type, after.op_type)
        )
    return found


def test_encoder_attention_is_the_pattern_tensorrt_fuses(onnx_dir: Path) -> None:
    patterns = attention_patterns(onnx_dir / "encoder.onnx")
    assert len(patterns) == 12  # one per ViT block
    for q_source, k_source, before, after in patterns:
        assert (before, after) == ("MatMul", "MatMul")  # nothing between the BMMs and Softmax
        assert "Mul" in (q_source, k_source)  # the scale is applied to q and/or k first
