"""CVAT's two ways in, against a real gateway process: the Nuclio interactor
(integrations/cvat/nuclio/main.py, driven by nuclio-sdk's own test platform, Event and
Context) and the cvat_sdk interaction function (integrations/cvat/sdk_function.py, with
cvat_sdk's types; its masks decoded by cvat_sdk.masks)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import cvat_sdk.auto_annotation as cvataa
import httpx
import nuclio_sdk
import nuclio_sdk.test
import numpy as np
import pytest
import yaml
from cvat_sdk.masks import decode_mask
from PIL import Image

from devtools.gateway_process import REPO, GatewayProcess
from devtools.prometheus import sample_sum
from tests.conftest import Fixture
from tests.support import rle_mask

pytestmark = pytest.mark.slow  # a gateway process: not in `make test-fast`

KEY = "cvat-test-key-0123456789"
NUCLIO = REPO / "integrations" / "cvat" / "nuclio"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # nuclio-sdk's platform finds init_context through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gateway(fixture: Fixture) -> Iterator[GatewayProcess]:
    settings = {"ESAM_CHECKPOINT": str(fixture.checkpoint), "ESAM_API_KEYS": KEY}
    with GatewayProcess(settings) as running:
        yield running


def segment(gateway: GatewayProcess, data: bytes, prompt: dict[str, Any], multimask: bool) -> Any:
    body = {"image": base64.b64encode(data).decode(), "prompts": [prompt], "multimask": multimask}
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(f"{gateway.url}/segment", json=body, headers=headers, timeout=300)
    assert response.status_code == 200, response.text
    best = response.json()["results"][0]["candidates"][0]
    return rle_mask(best), best["score"]


def encodes(gateway: GatewayProcess) -> float:
    return sample_sum(httpx.get(f"{gateway.url}/metrics").text, "esam_encoder_images_total")


def test_the_nuclio_functions_declare_cvats_interactor_contract() -> None:
    for name in ("function.yaml", "function-gpu.yaml"):
        document = yaml.safe_load((NUCLIO / name).read_text())
        annotations = document["metadata"]["annotations"]
        assert annotations["type"] == "interactor"
        assert annotations["min_pos_points"] == 1
        assert annotations["min_neg_points"] == 0
        assert annotations["startswith_box_optional"] is True
        assert document["spec"]["handler"] == "main:handler"
        assert (
            document["spec"]["triggers"]["myHttpTrigger"]["attributes"]["maxRequestBodySize"]
            >= 1 << 24
        )
        env = {e["name"] for e in document["spec"]["env"]}
        assert "ESAM_URL" in env


def test_the_nuclio_interactor_answers_cvats_body(
    gateway: GatewayProcess, fixture: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESAM_URL", gateway.url)
    monkeypatch.setenv("ESAM_API_KEY", KEY)
    main = load(NUCLIO / "main.py", "esam_cvat_nuclio_main")
    platform = nuclio_sdk.test.Platform()
    frame = fixture.image_path.read_bytes()

    contexts: list[Any] = []

    def call(body: dict[str, Any]) -> nuclio_sdk.Response:
        event = nuclio_sdk.Event(body=body, content_type="application/json")

        def keep(context: Any) -> Any:
            contexts.append(context)
            return context

        return platform.call_handler_with_context_mutation(main.handler, event, keep)

    def full(answer: dict[str, Any]) -> np.ndarray:
        x1, y1, x2, y2 = answer["bounds"]
        mask = np.zeros((603, 1072), bool)
        mask[y1 : y2 + 1, x1 : x2 + 1] = np.array(answer["mask"], dtype=bool)
        return mask

    before = encodes(gateway)
    body = {"image": base64.b64encode(frame).decode(), "pos_points": [[482, 301]], "neg_points": []}
    response = call(body)
    assert response.status_code == 200, response.body
    answer = json.loads(response.body)
    expected, _ = segment(gateway, frame, {"points": [[482, 301]], "labels": [1]}, True)
    np.testing.assert_array_equal(full(answer), expected)
    # cropped to the object: the mask CVAT gets is the bounds' size, not the frame's
    x1, y1, x2, y2 = answer["bounds"]
    assert len(answer["mask"]) == y2 - y1 + 1
    assert len(answer["mask"][0]) == x2 - x1 + 1
    ys, xs = np.nonzero(expected)
    assert answer["bounds"] == [xs.min(), ys.min(), xs.max(), ys.max()]
    # the polygon: the outline of the mask's largest part, in frame pixels
    outline = np.zeros((603, 1072), np.uint8)
    cv2.fillPoly(outline, [np.array(answer["points"], dtype=np.int32)], (1,))
    count, parts = cv2.connectedComponents(expected.astype(np.uint8), connectivity=8)
    largest = max(range(1, count), key=lambda k: int((parts == k).sum()))
    filled = outline.astype(bool)
    assert (filled & (parts == largest)).sum() == (parts == largest).sum()  # it covers it
    assert filled.sum() < 1.1 * (parts == largest).sum()  # and little else (its holes)
    assert encodes(gateway) == before + 1  # the frame was encoded once

    # further clicks on the frame: a positive, a negative and a box (CVAT's corner pairs)
    body |= {"pos_points": [[482, 301], [300, 200]], "neg_points": [[900, 100]]}
    body["obj_bbox"] = [[643, 482], [107, 120]]  # corners in either order
    response = call(body)
    assert response.status_code == 200, response.body
    prompt = {
        "points": [[482, 301], [300, 200], [900, 100]],
        "labels": [1, 1, 0],
        "box": [107, 120, 643, 482],
    }
    expected, _ = segment(gateway, frame, prompt, False)
    np.testing.assert_array_equal(full(json.loads(response.body)), expected)
    assert encodes(gateway) == before + 1  # decodes only

    # CVAT sees clear errors
    assert call({"pos_points": [[1, 1]]}).status_code == 400
    assert call({"image": "%%%", "pos_points": [[1, 1]]}).status_code == 400
    outside = call({"image": body["image"], "pos_points": [[5000, 10]], "neg_points": []})
    assert outside.status_code == 422
    assert json.loads(outside.body)["error"]["code"] == "invalid_prompt"
    contexts[0].user_data.gateway.http.close()


def test_the_nuclio_interactor_reports_a_gateway_it_cannot_reach(
    monkeypatch: pytest.MonkeyPatch, fixture: Fixture
) -> None:
    monkeypatch.setenv("ESAM_URL", "http://127.0.0.1:9")  # nothing listens on discard
    main = load(NUCLIO / "main.py", "esam_cvat_nuclio_main_unreachable")
    event = nuclio_sdk.Event(
        body={"image": base64.b64encode(b"x").decode(), "pos_points": [[1, 1]]},
        content_type="application/json",
    )
    contexts: list[Any] = []

    def keep(context: Any) -> Any:
        contexts.append(context)
        return context

    platform = nuclio_sdk.test.Platform()
    response = platform.call_handler_with_context_mutation(main.handler, event, keep)
    assert response.status_code == 502
    assert "unreachable" in json.loads(response.body)["error"]
    contexts[0].user_data.gateway.http.close()


class Prompts(cvataa.InteractionPrompts):
    def __init__(
        self,
        positive: Sequence[tuple[float, float]],
        negative: Sequence[tuple[float, float]] = (),
        box: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> None:
        self._positive, self._negative, self._box = list(positive), list(negative), box

    @property
    def pos_points(self) -> Sequence[tuple[float, float]]:
        return self._positive

    @property
    def neg_points(self) -> Sequence[tuple[float, float]]:
        return self._negative

    @property
    def bounding_box(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        return self._box


class Context(cvataa.InteractionFunctionContext):
    pass


def test_the_cvat_sdk_interaction_function(
    gateway: GatewayProcess, fixture: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESAM_URL", gateway.url)
    monkeypatch.setenv("ESAM_API_KEY", KEY)
    function = load(REPO / "integrations" / "cvat" / "sdk_function.py", "esam_cvat_sdk_function")
    assert isinstance(function.spec, cvataa.InteractionFunctionSpec)
    assert (function.spec.min_pos_points, function.spec.min_bounding_boxes) == (1, 0)
    image = Image.open(fixture.image_path)
    context = Context()
    frame = function.preprocess_image(context, image)
    png = io.BytesIO()
    image.convert("RGB").save(png, format="PNG", compress_level=1)
    assert frame.image_id == hashlib.sha256(png.getvalue()).hexdigest()
    encoded_once = encodes(gateway)

    cases = [
        (Prompts([(482, 301)]), {"points": [[482, 301]], "labels": [1]}, True),
        (
            Prompts([(482, 301)], [(900, 100)], ((107, 120), (643, 482))),
            {"points": [[482, 301], [900, 100]], "labels": [1, 0], "box": [107, 120, 643, 482]},
            False,
        ),
    ]
    for prompts, prompt, multimask in cases:
        [shape] = function.detect(context, frame, prompts)
        assert shape.type == "mask"
        mask = decode_mask(shape.points, image_width=1072, image_height=603)
        expected, score = segment(gateway, png.getvalue(), prompt, multimask)
        np.testing.assert_array_equal(mask, expected)
        [confidence] = shape.attributes
        assert confidence.spec_id == cvataa.InteractionResultAttributes.CONFIDENCE
        assert float(confidence.value) == pytest.approx(min(max(score, 0.0), 1.0))
    assert encodes(gateway) == encoded_once  # every click a decode

    # evicted (a DELETE here): detect uploads the frame once and answers all the same
    headers = {"Authorization": f"Bearer {KEY}"}
    assert (
        httpx.delete(f"{gateway.url}/embeddings/{frame.image_id}", headers=headers).status_code
        == 204
    )
    [shape] = function.detect(context, frame, cases[0][0])
    assert decode_mask(shape.points, image_width=1072, image_height=603).any()
    assert encodes(gateway) == encoded_once + 1
    function.client().close()
