"""Prompt validation and conversion to the decoder's padded point arrays."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidPromptError
from service.model.prompt_encoder import (
    LABEL_BACKGROUND,
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_FOREGROUND,
    LABEL_PADDING,
)

MAX_POINTS = 6


@dataclass(frozen=True)
class Prompt:
    """Points with labels (1 foreground, 0 background) and/or a box ``[x0, y0, x1, y1]``.

    Coordinates are pixels of the original (upright) image.
    """

    points: Sequence[Sequence[float]] = field(default_factory=tuple)
    labels: Sequence[int] = field(default_factory=tuple)
    box: Sequence[float] | None = None

    @property
    def ambiguous(self) -> bool:
        """One positive point alone: it may mean the whole, a part or a subpart, so SAM's
        rule for a click is to ask for the three multimask candidates and keep the best;
        more points or a box say which, and the single-mask output answers them. The one
        statement of the rule (``"multimask": "auto"``, Label Studio, both CVAT functions)."""
        return self.box is None and [int(label) for label in self.labels] == [LABEL_FOREGROUND]


def _check_number(value: float, axis: str, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidPromptError(f"{where}: {axis} must be a number")
    if not math.isfinite(value):
        raise InvalidPromptError(f"{where}: {axis} is not a finite number")
    return float(value)


def _check_pair(pair: Sequence[float], what: str, where: str) -> tuple[float, float]:
    if len(pair) != 2:
        raise InvalidPromptError(f"{where}: a {what} is [x, y], got {len(pair)} numbers")
    return _check_number(pair[0], "x", where), _check_number(pair[1], "y", where)


def _inside(point: tuple[float, float], width: int, height: int, where: str) -> tuple[float, float]:
    sides = zip(point, "xy", ("width", "height"), (width, height), strict=True)
    for value, axis, extent, limit in sides:
        if not 0 <= value <= limit:
            raise InvalidPromptError(
                f"{where}: {axis}={value:g} is outside the image ({extent} {limit})"
            )
    return point


def check_prompt_shape(prompt: Prompt, where: str = "prompt", max_points: int = MAX_POINTS) -> None:
    """What holds for a prompt whatever the image: points or a box, numbers that are
    finite, one label (1 or 0) per point, an ordered box, at most ``max_points`` points
    with a box counting as 2."""
    points, labels = list(prompt.points), list(prompt.labels)
    if not points and prompt.box is None:
        raise InvalidPromptError(f"{where}: a prompt needs points or a box")
    if len(points) != len(labels):
        raise InvalidPromptError(f"{where}.labels: {len(labels)} labels for {len(points)} points")
    corners = 0
    if prompt.box is not None:
        box = list(prompt.box)
        if len(box) != 4:
            raise InvalidPromptError(
                f"{where}.box: a box is [x0, y0, x1, y1], got {len(box)} numbers"
            )
        x0, y0 = _check_pair(box[:2], "corner", f"{where}.box")
        x1, y1 = _check_pair(box[2:], "corner", f"{where}.box")
        if x1 <= x0:
            raise InvalidPromptError(f"{where}.box: x1 ({x1:g}) must be greater than x0 ({x0:g})")
        if y1 <= y0:
            raise InvalidPromptError(f"{where}.box: y1 ({y1:g}) must be greater than y0 ({y0:g})")
        corners = 2
    for i, (point, label) in enumerate(zip(points, labels, strict=True)):
        _check_pair(point, "point", f"{where}.points[{i}]")
        if label not in (LABEL_FOREGROUND, LABEL_BACKGROUND) or isinstance(label, bool):
            raise InvalidPromptError(
                f"{where}.labels[{i}]: must be 1 (foreground) or 0 (background), got {label!r}"
            )
    if len(points) + corners > max_points:
        raise InvalidPromptError(
            f"{where}: {len(points) + corners} points (a box counts as 2); "
            f"at most {max_points} per prompt"
        )


def validate_prompt(
    prompt: Prompt, width: int, height: int, where: str = "prompt", max_points: int = MAX_POINTS
) -> tuple[list[tuple[float, float]], list[int]]:
    """Check one prompt (its shape, then each coordinate against the image size); return
    its points and labels. A box becomes its two corners (labels 2 and 3), placed first."""
    check_prompt_shape(prompt, where, max_points)
    out_points: list[tuple[float, float]] = []
    out_labels: list[int] = []
    if prompt.box is not None:
        box = [float(v) for v in prompt.box]
        out_points += [
            _inside((box[0], box[1]), width, height, f"{where}.box"),
            _inside((box[2], box[3]), width, height, f"{where}.box"),
        ]
        out_labels += [LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT]
    for i, point in enumerate(prompt.points):
        xy = (float(point[0]), float(point[1]))
        out_points.append(_inside(xy, width, height, f"{where}.points[{i}]"))
    out_labels += [int(label) for label in prompt.labels]
    return out_points, out_labels


def prompts_to_arrays(
    prompts: Sequence[Prompt],
    width: int,
    height: int,
    img_size: int = 1024,
    max_points: int = MAX_POINTS,
    field_name: str = "prompts",
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Validate prompts; return points ``[N, max_points, 2]`` in the model frame and labels.

    Coordinates are scaled by ``img_size / width`` and ``img_size / height``;
    padding is coordinate -1 with label -1, as the reference.
    """
    if not prompts:
        raise InvalidPromptError(f"{field_name}: at least one prompt is required")
    points = np.full((len(prompts), max_points, 2), -1.0, dtype=np.float32)
    labels = np.full((len(prompts), max_points), float(LABEL_PADDING), dtype=np.float32)
    scale = np.array([img_size / width, img_size / height], dtype=np.float64)
    for n, prompt in enumerate(prompts):
        pts, lbls = validate_prompt(prompt, width, height, f"{field_name}[{n}]", max_points)
        points[n, : len(pts)] = np.asarray(pts, dtype=np.float64) * scale
        labels[n, : len(lbls)] = lbls
    return points, labels
