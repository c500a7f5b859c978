"""Schemathesis hooks (``SCHEMATHESIS_HOOKS``): the rules JSON Schema cannot state.

The OpenAPI document states every rule of a request it can; these remain, because they
depend on the content of the image or relate one array to another. Schemathesis's
positive data must obey them to be valid, so its generators are extended, not its
checks relaxed (its documented answer to ``validation_mismatch``):

1. ``format: byte`` / ``format: binary`` images are image files in a format the
   server reads (schemathesis's own samples include GIF, PDF and ZIP);
2. prompt coordinates lie within the image (its size is known only from its pixels);
3. ``labels`` has one entry per point; a box's corners are ordered; at most six points
   per prompt, a box counting as two;
4. Label Studio's routes: a labeling config the model can answer (an ``<Image>`` with a
   ``<BrushLabels>`` or ``<PolygonLabels>`` on it), and tasks whose image key holds an
   image (a ``data:`` URI of one of the images above).

Negative cases are left alone: everything that breaks the schema must still be refused.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from schemathesis import Case

MAX_POINTS = 6


def _image(fmt: str, mode: str, size: tuple[int, int], **save: Any) -> tuple[bytes, int, int]:
    img = Image.new("RGB", size, (30, 80, 150))
    ImageDraw.Draw(img).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4))
    out = io.BytesIO()
    img.convert(mode).save(out, fmt, **save)
    return out.getvalue(), size[0], size[1]


def _rotated_jpeg() -> tuple[bytes, int, int]:
    """A JPEG stored 40 × 24 with EXIF orientation 6: upright it is 24 × 40."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data, _, _ = _image("JPEG", "RGB", (40, 24), exif=exif.tobytes())
    return data, 24, 40


#: (file, upright width, upright height)
IMAGES: list[tuple[bytes, int, int]] = [
    _image("PNG", "RGBA", (1, 1)),
    _image("PNG", "P", (33, 90)),
    _image("JPEG", "L", (120, 80), quality=85),
    _rotated_jpeg(),
    _image("WEBP", "RGB", (50, 30)),
    _image("BMP", "RGB", (21, 13)),
    _image("TIFF", "RGB", (16, 16)),
]
SIZES = {base64.b64encode(data).decode(): (w, h) for data, w, h in IMAGES}
#: The stateful phase names an uploaded image by the id /embed returned, filled in
#: after this hook ran: prompts for an image by id fit the smallest image of all.
SMALLEST = (min(w for _, w, _ in IMAGES), min(h for _, _, h in IMAGES))

schemathesis.openapi.format("binary", st.sampled_from([data for data, _, _ in IMAGES]))
schemathesis.openapi.format("byte", st.sampled_from(sorted(SIZES)))


def _fit_prompt(prompt: dict[str, Any], width: int, height: int) -> None:
    def clamp(x: float, y: float) -> list[float]:
        return [min(x, width), min(y, height)]

    box = prompt.get("box")
    if box is not None:
        x0, y0 = clamp(*box[:2])
        x1, y1 = clamp(*box[2:])
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        if x0 == x1:
            x0, x1 = (x1 - 1, x1) if x1 >= 1 else (0, 1)
        if y0 == y1:
            y0, y1 = (y1 - 1, y1) if y1 >= 1 else (0, 1)
        prompt["box"] = [x0, y0, x1, y1]
    room = MAX_POINTS - (2 if box is not None else 0)
    points = [clamp(*p) for p in prompt.get("points", [])][:room]
    if "points" in prompt:
        prompt["points"] = points
    if points or "labels" in prompt:
        labels = list(prompt.get("labels", []))
        prompt["labels"] = (labels + [1] * len(points))[: len(points)]
    if not points and box is None:  # the last point fell to the room a box takes
        prompt["points"], prompt["labels"] = [[0.0, 0.0]], [1]


#: (labeling config, the task data key of its image)
LABEL_CONFIGS = [
    (
        '<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image">'
        '<Label value="object"/></BrushLabels></View>',
        "image",
    ),
    (
        '<View><Image name="pic" value="$photo"/><PolygonLabels name="outline" toName="pic">'
        '<Label value="a"/><Label value="b"/></PolygonLabels>'
        '<BrushLabels name="brush" toName="pic"/></View>',
        "photo",
    ),
]
DATA_URIS = [
    f"data:image/{Image.open(io.BytesIO(data)).format.lower()};base64,"  # type: ignore[union-attr]
    + base64.b64encode(data).decode()
    for data, _, _ in IMAGES
]


def _pick(body: Any, choices: int) -> int:
    """A choice that follows from the generated body (so the run stays deterministic)."""
    return len(json.dumps(body, sort_keys=True, default=str)) % choices


def _label_studio(path: str, body: dict[str, Any]) -> None:
    config, key = LABEL_CONFIGS[_pick(body, len(LABEL_CONFIGS))]
    if path == "/labelstudio/setup":
        if isinstance(body.get("schema"), str):
            body["schema"] = config
        return
    body["label_config"] = config
    for n, task in enumerate(body.get("tasks", [])):
        if isinstance(task, dict) and isinstance(task.get("data"), dict):
            task["data"][key] = DATA_URIS[(_pick(task, len(DATA_URIS)) + n) % len(DATA_URIS)]


@schemathesis.hook
def map_case(ctx: Any, case: Case) -> Case:
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    body: Any = case.body
    if not isinstance(body, dict):
        return case
    if case.path in ("/labelstudio/setup", "/labelstudio/predict"):
        body = copy.deepcopy(body)
        _label_studio(case.path, body)
        case.body = body
        return case
    if case.path != "/segment":
        return case
    body = copy.deepcopy(body)
    width, height = SIZES.get(str(body.get("image")), SMALLEST)
    prompts = body.get("prompts")
    for prompt in prompts if isinstance(prompts, list) else []:
        if isinstance(prompt, dict):
            _fit_prompt(prompt, width, height)
    case.body = body  # assigned, not mutated: schemathesis tracks what a hook changed
    return case
