"""efficientsam_decoder in a real tritonserver: resident embeddings, batched prompts of
several images, masks as run lengths equal to the in-process decoder's."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from pycocotools import mask as coco_mask
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from devtools.triton import LocalTriton
from devtools.triton_config import DECODER
from service.core.edges import EdgeParams, edge_map
from service.core.everything import Crop
from service.core.loading import load_serving_model
from service.model import EfficientSam
from service.model.masks import compress_rle, encode_rle, upsample_masks
from service.model.prompts import prompts_to_arrays
from tests.conftest import Fixture, fixtures_dir
from tests.model.conformance import mask_iou

pytestmark = pytest.mark.slow  # a real tritonserver: not in `make test-fast`

OUTPUTS = ("status", "scores", "rle_lengths", "rle_counts")
WIDTH, HEIGHT = 1072, 603


def decoder_inputs(
    module: Any,
    points: np.ndarray,
    labels: np.ndarray,
    embedding: np.ndarray | None,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    extra: dict[str, np.ndarray] | None = None,
) -> list[Any]:
    tensors = {
        "points": points[None].astype(np.float32),
        "labels": labels[None].astype(np.float32),
        "image_size": np.array([size], dtype=np.int32),
    }
    if embedding is not None:
        tensors["embedding"] = embedding.reshape(1, 256, 64, 64).astype(np.float16)
    return tensor_inputs(module, {**tensors, **(extra or {})})


def tensor_inputs(module: Any, tensors: dict[str, np.ndarray]) -> list[Any]:
    inputs = []
    for name, array in tensors.items():
        dtype = np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def masks_of(result: Any, size: tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """``[N, K, H, W]`` bool from the answer's run lengths."""
    scores = result.as_numpy("scores")[0]
    lengths = result.as_numpy("rle_lengths")[0]
    counts = result.as_numpy("rle_counts")[0]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    masks = []
    for k in range(len(lengths)):
        rle = compress_rle(counts[bounds[k] : bounds[k + 1]].tolist(), *size)
        raw = {"size": rle["size"], "counts": rle["counts"].encode()}
        masks.append(coco_mask.decode(raw).astype(bool))
    return np.array(masks).reshape(*scores.shape, *size)


@functools.cache
def model_id() -> str:
    """The fixture checkpoint's model id, as the gateway names it (the decoder checks it)."""
    checkpoint = fixtures_dir() / "efficientsam-ti-seed0" / "efficient_sam_vitt_random_seed0.pt"
    return load_serving_model(str(checkpoint), None, "cpu").model_id


def infer(
    client: Any, module: Any, image: str, inputs: list[Any], candidates: str = "multimask"
) -> Any:
    """One request for ``image`` of the fixture's model."""
    outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]
    return client.infer(
        DECODER,
        inputs,
        outputs=outputs,
        parameters={"image": f"{model_id()}/{image}", "candidates": candidates},
    )


@pytest.fixture(scope="module")
def fixture_prompts(fixture: Fixture) -> tuple[np.ndarray, np.ndarray]:
    return prompts_to_arrays(fixture.prompts(), WIDTH, HEIGHT)


def local_candidates(
    model: EfficientSam, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What the gateway's in-process decoder computes: masks and scores, best first."""
    with torch.inference_mode():
        logits, iou = model.decode(
            torch.from_numpy(embedding), torch.from_numpy(points), torch.from_numpy(labels)
        )
    order = torch.argsort(iou, dim=1, descending=True, stable=True)
    iou = torch.gather(iou, 1, order)
    logits = torch.gather(logits, 1, order[:, :, None, None].expand(-1, -1, 256, 256))
    return upsample_masks(logits, HEIGHT, WIDTH).numpy(), iou.numpy()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_masks_and_scores_equal_the_in_process_decoder(
    triton: LocalTriton,
    fixture_model: EfficientSam,
    expected: dict[str, np.ndarray],
    fixture_prompts: tuple[np.ndarray, np.ndarray],
    protocol: str,
) -> None:
    module = grpcclient if protocol == "grpc" else httpclient
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    client = module.InferenceServerClient(url.split("://")[1])
    embedding = expected["image_embeddings"]
    points, labels = fixture_prompts
    image = f"test-fidelity-{protocol}"
    # the FP16 embedding as the gateway caches it, on both sides
    half = embedding.astype(np.float16).astype(np.float32)
    want_masks, want_scores = local_candidates(fixture_model, half, points, labels)

    first = infer(client, module, image, decoder_inputs(module, points, labels, embedding))
    assert first.as_numpy("status").tolist() == [[0]]
    got = masks_of(first)
    assert got.shape == (5, 3, HEIGHT, WIDTH)
    assert mask_iou(got, want_masks).min() >= 0.99
    assert np.abs(first.as_numpy("scores")[0] - want_scores).max() <= 1e-4
    # the run lengths are COCO's: the same compressed strings as the gateway's encoder
    lengths = first.as_numpy("rle_lengths")[0]
    counts = first.as_numpy("rle_counts")[0]
    own = compress_rle(counts[: lengths[0]].tolist(), HEIGHT, WIDTH)
    assert own == encode_rle(got[0, 0])

    # resident now: the same prompts without the embedding give the same answer
    again = infer(client, module, image, decoder_inputs(module, points, labels, None))
    assert again.as_numpy("status").tolist() == [[0]]
    assert np.array_equal(again.as_numpy("rle_counts"), first.as_numpy("rle_counts"))
    assert np.array_equal(again.as_numpy("scores"), first.as_numpy("scores"))


def int8_of(embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per channel, as the issue defines it (written here,
    not taken from the gateway)."""
    flat = embedding.reshape(256, -1).astype(np.float32)
    scales = (np.abs(flat).max(axis=1) / 127).astype(np.float32)
    values = np.clip(np.rint(flat / scales[:, None]), -127, 127).astype(np.int8)
    return values.reshape(1, 256, 64, 64), scales[None]


def resident_bytes(triton: LocalTriton) -> float:
    from devtools.prometheus import sample_sum

    return sample_sum(triton.metrics_text(), "esam_decoder_resident_bytes")


def test_int8_embeddings_are_kept_as_int8_and_decode_as_their_floats(
    triton: LocalTriton,
    fixture_model: EfficientSam,
    expected: dict[str, np.ndarray],
    fixture_prompts: tuple[np.ndarray, np.ndarray],
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url.split("://")[1])
    values, scales = int8_of(expected["image_embeddings"])
    points, labels = fixture_prompts
    dequantised = values.astype(np.float32) * scales[0][None, :, None, None]
    want_masks, want_scores = local_candidates(fixture_model, dequantised, points, labels)
    int8 = {"embedding_int8": values, "embedding_scales": scales}
    image = f"test-int8-{uuid.uuid4().hex[:8]}"
    before = resident_bytes(triton)
    first = infer(
        client, grpcclient, image, decoder_inputs(grpcclient, points, labels, None, extra=int8)
    )
    assert first.as_numpy("status").tolist() == [[0]]
    # kept as sent: 1 MiB of values and 256 float32 scales (FP16 would be 2 MiB)
    assert resident_bytes(triton) - before == 256 * 64 * 64 + 256 * 4
    assert mask_iou(masks_of(first), want_masks).min() >= 0.99
    assert np.abs(first.as_numpy("scores")[0] - want_scores).max() <= 1e-4
    again = infer(client, grpcclient, image, decoder_inputs(grpcclient, points, labels, None))
    assert np.array_equal(again.as_numpy("rle_counts"), first.as_numpy("rle_counts"))

    bad = {
        "scales missing": ({"embedding_int8": values}, "come together"),
        "both kinds": ({**int8, "embedding": values.astype(np.float16)}, "not both"),
        "zero scale": (
            {**int8, "embedding_scales": np.zeros_like(scales)},
            "positive and finite",
        ),
        "short scales": ({**int8, "embedding_scales": scales[:, :8]}, "embedding_scales"),
    }
    for name, (tensors, message) in bad.items():
        base = decoder_inputs(grpcclient, points, labels, None)
        with pytest.raises(InferenceServerException, match=message):
            infer(
                client,
                grpcclient,
                f"test-int8-bad-{name}",
                base + tensor_inputs(grpcclient, tensors),
            )
    assert client.is_model_ready(DECODER)


def test_an_image_not_resident_is_an_answer_not_an_error(
    triton: LocalTriton, fixture_prompts: tuple[np.ndarray, np.ndarray]
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url.split("://")[1])
    points, labels = fixture_prompts
    before = triton.metrics_text()
    answer = infer(
        client, grpcclient, "never-sent", decoder_inputs(grpcclient, points, labels, None)
    )
    assert answer.as_numpy("status").tolist() == [[1]]
    assert answer.as_numpy("scores").shape == (1, 0, 0)
    assert answer.as_numpy("rle_counts").size == 0
    after = triton.metrics_text()
    assert miss_count(after) == miss_count(before) + 1


def miss_count(metrics: str) -> float:
    from devtools.prometheus import sample_sum

    return sample_sum(metrics, "esam_decoder_resident_misses")


def test_best_and_single_candidates(
    triton: LocalTriton,
    fixture_model: EfficientSam,
    expected: dict[str, np.ndarray],
    fixture_prompts: tuple[np.ndarray, np.ndarray],
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url.split("://")[1])
    embedding = expected["image_embeddings"]
    points, labels = fixture_prompts
    inputs = decoder_inputs(grpcclient, points, labels, embedding)
    best = infer(client, grpcclient, "test-best", inputs, candidates="best")
    multimask = infer(client, grpcclient, "test-best", inputs[:3], candidates="multimask")
    assert best.as_numpy("scores").shape == (1, 5, 1)
    assert np.array_equal(best.as_numpy("scores")[0, :, 0], multimask.as_numpy("scores")[0, :, 0])
    assert np.array_equal(masks_of(best)[:, 0], masks_of(multimask)[:, 0])
    single = infer(client, grpcclient, "test-best", inputs[:3], candidates="single")
    half = torch.from_numpy(embedding.astype(np.float16).astype(np.float32))
    with torch.inference_mode():
        _, iou = fixture_model.decode(
            half, torch.from_numpy(points), torch.from_numpy(labels), multimask=False
        )
    assert np.abs(single.as_numpy("scores")[0] - iou.numpy()).max() <= 1e-4


async def test_requests_for_different_images_share_executions_and_fail_alone(
    triton: LocalTriton,
    expected: dict[str, np.ndarray],
    fixture_prompts: tuple[np.ndarray, np.ndarray],
) -> None:
    """Eight images' clicks at once: fewer executions than requests; one malformed
    request among them gets its own error and the others their masks."""
    client = grpcaio.InferenceServerClient(triton.grpc_url.split("://")[1])
    embedding = expected["image_embeddings"]
    points, labels = fixture_prompts
    rng = np.random.default_rng(3)
    images = {f"test-batch-{i}": embedding + rng.normal(0, 0.05, embedding.shape) for i in range(8)}
    outputs = [grpcaio.InferRequestedOutput(name) for name in OUTPUTS]

    async def click(image: str, emb: np.ndarray | None, bad: bool = False) -> Any:
        wrong = labels[:, :3] if bad else labels
        return await client.infer(
            DECODER,
            decoder_inputs(grpcaio, points[:1], wrong[:1], emb),
            outputs=outputs,
            parameters={"image": f"{model_id()}/{image}", "candidates": "multimask"},
        )

    try:
        for image, emb in images.items():  # resident first
            await click(image, emb.astype(np.float32))
        requests_before = triton.counter("nv_inference_count", DECODER)
        executions_before = triton.counter("nv_inference_exec_count", DECODER)
        calls = [click(image, None) for image in images for _ in range(2)]
        calls.append(click("test-batch-0", None, bad=True))
        results = await asyncio.gather(*calls, return_exceptions=True)
        *answers, bad = results
        assert isinstance(bad, InferenceServerException)
        assert "labels must be" in str(bad)
        good = [r for r in answers if not isinstance(r, BaseException)]
        assert len(good) == len(answers), answers
        assert all(r.as_numpy("status").tolist() == [[0]] for r in good)
        requests = triton.counter("nv_inference_count", DECODER) - requests_before
        executions = triton.counter("nv_inference_exec_count", DECODER) - executions_before
        assert requests >= 16
        assert executions < requests  # prompts of several images decoded in one pass
        # each image answered with its own embedding: images differ, so masks differ
        first, second = good[0], good[2]
        assert not np.array_equal(first.as_numpy("rle_counts"), second.as_numpy("rle_counts"))
    finally:
        await client.close()


def test_malformed_parameters_are_refused_per_request(
    triton: LocalTriton, fixture_prompts: tuple[np.ndarray, np.ndarray]
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url.split("://")[1])
    points, labels = fixture_prompts
    inputs = decoder_inputs(grpcclient, points, labels, None)
    with pytest.raises(InferenceServerException, match="candidates must be one of"):
        infer(client, grpcclient, "x", inputs, candidates="all of them")
    with pytest.raises(InferenceServerException, match="'image'"):
        client.infer(DECODER, inputs, parameters={"candidates": "best"})
    nan = points.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException, match="NaN"):
        infer(client, grpcclient, "x", decoder_inputs(grpcclient, nan, labels, None))
    assert client.is_model_ready(DECODER)  # and still serving


def test_the_identity_probe_names_the_decoders_checkpoint(
    triton: LocalTriton, fixture_prompts: tuple[np.ndarray, np.ndarray]
) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url.split("://")[1])
    points, labels = fixture_prompts
    own_id = model_id()
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("status", "model")]
    inputs = decoder_inputs(grpcclient, points[:1], labels[:1], None)
    same = client.infer(
        DECODER, inputs, outputs=outputs, parameters={"image": f"{own_id}/x", "identity": True}
    )
    assert same.as_numpy("status").tolist() == [[2]]
    own = same.as_numpy("model").reshape(-1)[0].decode()
    assert own_id.startswith(own)  # variant and checkpoint digest
    other = client.infer(
        DECODER,
        inputs,
        outputs=outputs,
        parameters={"image": "efficientsam-ti-000000000000-p1/x", "identity": True},
    )
    assert other.as_numpy("status").tolist() == [[3]]
    with pytest.raises(InferenceServerException, match="model mismatch"):
        client.infer(
            DECODER, inputs, parameters={"image": "efficientsam-ti-000000000000-p1/x"}
        )  # a click of another model's image: refused, not decoded with this one


def test_an_edge_request_answers_the_in_process_edge_map(
    triton: LocalTriton, fixture_model: EfficientSam, expected: dict[str, np.ndarray]
) -> None:
    """Parameter ``edges``: the resident embedding's edge map, as ``service.core.edges``
    computes it in-process on the same (FP16) embedding; bad parameters are refused."""
    client = grpcclient.InferenceServerClient(triton.grpc_url.split("://")[1])
    embedding = expected["image_embeddings"]
    image = f"test-edges-{uuid.uuid4().hex[:8]}"
    dummy = (np.zeros((1, 1, 2), np.float32), np.ones((1, 1), np.float32))
    infer(client, grpcclient, image, decoder_inputs(grpcclient, *dummy, embedding))  # resident
    names = ("status", "edges", "edge_counts", "edge_seconds")
    outputs = [grpcclient.InferRequestedOutput(n) for n in names]
    params = {"points_per_side": 2, "points_per_batch": 4, "box_nms_thresh": 0.7}
    answer = client.infer(
        DECODER,
        decoder_inputs(grpcclient, *dummy, None),
        outputs=outputs,
        parameters={"image": f"{model_id()}/{image}", "edges": json.dumps(params)},
    )
    assert answer.as_numpy("status").tolist() == [[0]]
    got = answer.as_numpy("edges")[0]
    assert got.shape == (HEIGHT, WIDTH)
    half = torch.from_numpy(embedding.astype(np.float16).astype(np.float32))
    want = edge_map(
        fixture_model,
        [Crop((0, 0, WIDTH, HEIGHT), half)],
        WIDTH,
        HEIGHT,
        EdgeParams(**params),  # type: ignore[arg-type]
    )
    assert answer.as_numpy("edge_counts").tolist() == [[want.candidates, want.masks]]
    assert np.abs(got - want.strength).max() <= 1e-4
    assert ((got > 0) == (want.strength > 0)).mean() >= 0.999
    assert (answer.as_numpy("edge_seconds") >= 0).all()
    for bad, message in (({"points_per_side": 0}, "points_per_side"), ({"nope": 1}, "nope")):
        with pytest.raises(InferenceServerException, match=message):
            client.infer(
                DECODER,
                decoder_inputs(grpcclient, *dummy, None),
                outputs=outputs,
                parameters={"image": f"{model_id()}/{image}", "edges": json.dumps(bad)},
            )
