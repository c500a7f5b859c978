"""Typed requests and results; masks stay COCO RLE until asked for as numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Prompt:
    """Points (pixels of the image as displayed) with labels (1 foreground, 0 background),
    a box ``(x0, y0, x1, y1)``, or both."""

    points: Sequence[tuple[float, float]] = ()
    labels: Sequence[int] | None = None  # default: every point foreground
    box: tuple[float, float, float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.points:
            body["points"] = [[float(x), float(y)] for x, y in self.points]
            labels = [1] * len(self.points) if self.labels is None else list(self.labels)
            body["labels"] = [int(label) for label in labels]
        if self.box is not None:
            body["box"] = [float(v) for v in self.box]
        return body


@dataclass(frozen=True)
class Embedded:
    """An image whose embedding the gateway now holds."""

    image_id: str
    uploaded: bool  # False: the cache had it and no byte of the image was sent
    cached: bool  # True: no encode was needed
    width: int | None = None  # known when the image was uploaded
    height: int | None = None
    model: str | None = None


def rle_counts(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            char = ord(counts[position]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(rle: dict[str, Any]) -> NDArray[np.bool_]:
    """``{"size": [h, w], "counts": "..."}`` → a ``[h, w]`` boolean mask."""
    height, width = (int(v) for v in rle["size"])
    runs = np.asarray(rle_counts(rle["counts"]), dtype=np.int64)
    values = np.arange(len(runs)) % 2 == 1  # runs alternate background, foreground
    flat = np.repeat(values, runs)
    if flat.size != height * width:
        raise ValueError(f"RLE covers {flat.size} pixels, not {height} × {width}")
    return flat.reshape((height, width), order="F")


@dataclass(frozen=True)
class Candidate:
    score: float  # predicted IoU
    area: int
    bbox: tuple[float, float, float, float]  # x, y, w, h
    rle: dict[str, Any]

    def mask(self) -> NDArray[np.bool_]:
        return decode_rle(self.rle)


@dataclass(frozen=True)
class Segmentation:
    image_id: str
    width: int
    height: int
    model: str
    cached: bool
    results: list[list[Candidate]]  # per prompt, best first


@dataclass(frozen=True)
class EverythingMask:
    area: int
    bbox: tuple[float, float, float, float]
    predicted_iou: float
    stability_score: float
    point: tuple[float, float]
    rle: dict[str, Any]

    def mask(self) -> NDArray[np.bool_]:
        return decode_rle(self.rle)


@dataclass(frozen=True)
class Everything:
    image_id: str
    width: int
    height: int
    model: str
    cached: bool
    masks: list[EverythingMask] = field(default_factory=list)  # best first
