"""EfficientSAM for CVAT as a Nuclio interactor: CVAT's body in, CVAT's mask out, the
gateway in between.

CVAT POSTs ``{"image": <base64 frame>, "pos_points": [[x, y], ...], "neg_points": [...],
"obj_bbox": [[x1, y1], [x2, y2]] | null}`` (absolute pixels). The function asks the
gateway for the frame's mask by the frame's SHA-256 first and sends the frame only when
the gateway does not hold its embedding (404 ``embedding_not_found``): every further
click on a frame is a decode and carries no image to the gateway. It answers
``{"mask": <rows of 0/1 inside bounds>, "bounds": [x1, y1, x2, y2], "points": [[x, y],
...]}`` (bounds inclusive; points: the outline of the mask's largest part), which CVAT's
interactor tools place at ``bounds``: a mask cropped to the object instead of a
frame-sized one (the 4-24 MB answers CVAT users meet).

The gateway applies SAM's rule for a click (``"multimask": "auto"`` with ``best_only``):
one positive point alone → the best of the three multimask candidates; more points or a
box → the single-mask output. Settings (environment): ``ESAM_URL`` (the gateway),
``ESAM_API_KEY`` (when the gateway has keys), ``ESAM_TIMEOUT_S``.

Needs httpx, numpy, pillow and OpenCV (``function.yaml`` installs them); holds no model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from typing import Any

import cv2
import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image


class Gateway:
    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def segment(self, frame: bytes, prompt: dict[str, Any]) -> httpx.Response:
        # one mask per click, chosen by the gateway's rule for a click
        body = {"prompts": [prompt], "multimask": "auto", "best_only": True, "mask_format": "png"}
        by_id = {**body, "image_id": hashlib.sha256(frame).hexdigest()}
        response = self.http.post("/segment", json=by_id)
        if response.status_code == 404 and _code(response) == "embedding_not_found":
            with_image = {**body, "image": base64.b64encode(frame).decode("ascii")}
            response = self.http.post("/segment", json=with_image)
        return response


def _code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(code)


def prompt_of(body: dict[str, Any]) -> dict[str, Any]:
    """CVAT's points and box → one gateway prompt."""
    positive = [[float(x), float(y)] for x, y in body.get("pos_points") or []]
    negative = [[float(x), float(y)] for x, y in body.get("neg_points") or []]
    prompt: dict[str, Any] = {}
    if positive or negative:
        prompt["points"] = positive + negative
        prompt["labels"] = [1] * len(positive) + [0] * len(negative)
    box = body.get("obj_bbox")
    if box:
        flat = [
            float(v) for corner in box for v in (corner if isinstance(corner, list) else [corner])
        ]
        x1, y1, x2, y2 = flat[:4]
        prompt["box"] = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    return prompt


def answer(mask: NDArray[np.bool_]) -> dict[str, Any]:
    """CVAT's interactor result: the mask inside its bounding box, the box, and the outline
    of the mask's largest part (absolute pixels) as the polygon."""
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        return {"mask": [[0]], "bounds": [0, 0, 0, 0], "points": []}
    x1, x2, y1, y2 = int(columns.min()), int(columns.max()), int(rows.min()), int(rows.max())
    inside = mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8)
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea).reshape(-1, 2) + np.array([x1, y1])
    return {"mask": inside.tolist(), "bounds": [x1, y1, x2, y2], "points": outline.tolist()}


def init_context(context: Any) -> None:
    context.user_data.gateway = Gateway(
        os.environ.get("ESAM_URL", "http://esam-gateway:8080"),
        os.environ.get("ESAM_API_KEY") or None,
        float(os.environ.get("ESAM_TIMEOUT_S", "60")),
    )
    context.logger.info("EfficientSAM interactor ready")


def _json(context: Any, body: dict[str, Any], status: int) -> Any:
    return context.Response(
        body=json.dumps(body), headers={}, content_type="application/json", status_code=status
    )


def handler(context: Any, event: Any) -> Any:
    body = event.body if isinstance(event.body, dict) else json.loads(event.body or b"{}")
    if not isinstance(body.get("image"), str):
        return _json(context, {"error": "the body needs 'image': the frame in base64"}, 400)
    try:
        frame = base64.b64decode(body["image"], validate=True)
    except ValueError:
        return _json(context, {"error": "'image' is not valid base64"}, 400)
    prompt = prompt_of(body)
    if not prompt:
        return _json(context, {"error": "give at least one point or a box"}, 400)
    try:
        response = context.user_data.gateway.segment(frame, prompt)
    except httpx.HTTPError as exc:
        context.logger.warn(f"gateway unreachable: {exc}")
        return _json(context, {"error": f"the EfficientSAM gateway is unreachable: {exc}"}, 502)
    if response.status_code != 200:  # the gateway's error, with its code and status
        return _json(context, response.json(), response.status_code)
    best = response.json()["results"][0]["candidates"][0]
    png = Image.open(io.BytesIO(base64.b64decode(best["mask"])))
    return _json(context, answer(np.asarray(png.convert("L")) > 0), 200)
