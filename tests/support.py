"""Helpers the test modules share: test images, error and mask assertions, request
bodies, the browser's path, Label Studio's labeling config and regions.

One module (no test module imports another's helpers)."""

from __future__ import annotations

import base64
import io
import shutil
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from devtools.label_studio import sdk_call
from tests.conftest import Fixture


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    assert response.headers["X-Request-Id"]


def fixture_prompts(fixture: Fixture) -> list[dict[str, Any]]:
    prompts = []
    for prompt in fixture.prompts():
        item: dict[str, Any] = {
            "points": [list(p) for p in prompt.points],
            "labels": list(prompt.labels),
        }
        if prompt.box is not None:
            item["box"] = list(prompt.box)
        prompts.append(item)
    return prompts


def decode_logits(candidate: dict[str, Any]) -> np.ndarray:
    logits = candidate["logits"]
    assert logits["dtype"] == "float32"
    raw = np.frombuffer(base64.b64decode(logits["data"]), dtype="<f4")
    shaped: np.ndarray = raw.reshape(logits["shape"])
    return shaped


def rle_mask(candidate: dict[str, Any]) -> np.ndarray:
    mask = candidate["mask"]
    decoded: np.ndarray = coco_mask.decode(
        {"size": mask["size"], "counts": mask["counts"].encode()}
    )
    return decoded.astype(bool)


def request_body(params: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    names = (
        "points_per_side",
        "points_per_batch",
        "pred_iou_thresh",
        "stability_score_thresh",
        "stability_score_offset",
        "box_nms_thresh",
    )
    return {**{n: params[n] for n in names}, **overrides}


async def embed(client: httpx.AsyncClient, data: bytes) -> dict[str, object]:
    response = await client.post("/embed", content=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def segment_status(client: httpx.AsyncClient, image_id: object) -> int:
    response = await client.post(
        "/segment",
        json={"image_id": image_id, "prompts": [{"points": [[10, 10]], "labels": [1]}]},
    )
    return response.status_code


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    return path


CONFIG = """<View>
  <Image name="image" value="$img" zoom="true"/>
  <BrushLabels name="brush" toName="image"><Label value="dog"/><Label value="stick"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="dog"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="stick"/></RectangleLabels>
</View>"""


DECODE = """
import json, sys
import numpy as np
from label_studio_sdk.converter import brush
out = []
for item in json.load(sys.stdin):
    rgba = brush.decode_rle(item["rle"]).reshape(item["height"], item["width"], 4)
    out.append(np.packbits(rgba[:, :, 3] > 0).tolist())
print(json.dumps(out))
"""


def brush_masks(regions: list[dict[str, Any]]) -> list[np.ndarray]:
    """Brush regions → boolean masks, by label_studio_sdk's decoder."""
    payload = [
        {"rle": r["value"]["rle"], "width": r["original_width"], "height": r["original_height"]}
        for r in regions
    ]
    packed = sdk_call(DECODE, payload)
    return [
        np.unpackbits(np.array(bits, dtype=np.uint8))[: p["width"] * p["height"]]
        .reshape(p["height"], p["width"])
        .astype(bool)
        for bits, p in zip(packed, payload, strict=True)
    ]


def keypoint(x: float, y: float, positive: bool = True, label: str = "dog") -> dict[str, Any]:
    return {
        "id": "k1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": 1072,
        "original_height": 603,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": [label], "labels": [label]},
        "is_positive": positive,
    }


def rectangle(x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {
        "id": "r1",
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 1072,
        "original_height": 603,
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": 0,
            "rectanglelabels": ["stick"],
        },
    }
