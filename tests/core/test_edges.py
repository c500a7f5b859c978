"""Zero-shot edge detection against shapes whose boundaries the test knows exactly."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
import torch

from service.core.edges import EdgeParams, boundary_band, edge_map, thin
from service.core.everything import Crop
from service.model import CONFIGS, EfficientSam
from service.model.preprocess import decode_image, resize_to_model

WIDTH, HEIGHT = 320, 240
#: signed distance in pixels (> 0 inside) of each shape, at pixel centres (x, y)
Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


def disc(cx: float, cy: float, r: float) -> Field:
    return lambda x, y: r - np.hypot(x - cx, y - cy)


def square(x0: float, y0: float, x1: float, y1: float) -> Field:
    return lambda x, y: np.minimum.reduce([x - x0, x1 - x, y - y0, y1 - y])


def ring(cx: float, cy: float, inner: float, outer: float) -> Field:
    return lambda x, y: np.minimum(
        np.hypot(x - cx, y - cy) - inner, outer - np.hypot(x - cx, y - cy)
    )


SHAPES: list[Field] = [
    disc(70, 70, 40),
    square(170.3, 30.6, 290.2, 110.4),
    ring(120, 170, 18, 52),
]


class ShapeDecoder:
    """A stand-in for the model's prompt decoder: for a point inside a shape, that shape's
    mask as all three candidates (so NMS has repeats to remove); for a point elsewhere,
    the background (everything outside the shapes) and two empty masks. Logits are the
    signed distance (one logit per pixel) on the 256×256 low-resolution grid, which the
    pipeline upsamples to the image like the model's."""

    config = CONFIGS["ti"]

    def __init__(self, width: int, height: int, shapes: list[Field]) -> None:
        self.width, self.height, self.shapes = width, height, shapes
        u = (np.arange(256) + 0.5) * width / 256 - 0.5
        v = (np.arange(256) + 0.5) * height / 256 - 0.5
        xs, ys = np.meshgrid(u, v)
        self.fields = [shape(xs, ys) for shape in shapes]
        nothing = np.full_like(xs, -20.0)
        self.background = -np.maximum.reduce([nothing, *self.fields])
        self.calls = 0

    def decode(
        self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert multimask
        self.calls += 1
        size = self.config.img_size
        out = []
        empty = np.full((256, 256), -20.0)
        for x_model, y_model in points[:, 0].tolist():
            x, y = x_model * self.width / size, y_model * self.height / size
            inside = [
                f
                for shape, f in zip(self.shapes, self.fields, strict=True)
                if shape(np.array(x), np.array(y)) > 0
            ]
            out.append([inside[0]] * 3 if inside else [self.background, empty, empty])
        logits = torch.from_numpy(np.clip(np.array(out), -20, 20).astype(np.float32))
        iou = torch.tensor([[0.9, 0.8, 0.7]] * len(out))
        return logits, iou


def truth(width: int, height: int, shapes: list[Field]) -> tuple[np.ndarray, np.ndarray]:
    """(boundary pixels, distance of every pixel to the nearest boundary pixel), from the
    shapes alone: a pixel is on a boundary where its inside/outside differs from one of
    its 4-neighbours'."""
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    inside = np.zeros((height, width), dtype=bool)
    for shape in shapes:
        inside |= shape(xs, ys) > 0
    edge = np.zeros_like(inside)
    edge[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    edge[:, :-1] |= inside[:, 1:] != inside[:, :-1]
    edge[1:] |= inside[1:] != inside[:-1]
    edge[:-1] |= inside[1:] != inside[:-1]
    distance = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_C, 3)
    return edge, distance


def chebyshev(mask: np.ndarray) -> np.ndarray:
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_C, 3)


def run(params: EdgeParams, decoder: ShapeDecoder | None = None) -> tuple[np.ndarray, int, int]:
    decoder = decoder or ShapeDecoder(WIDTH, HEIGHT, SHAPES)
    crop = Crop((0, 0, WIDTH, HEIGHT), torch.zeros(1, 256, 64, 64))
    found = edge_map(decoder, [crop], WIDTH, HEIGHT, params)
    return found.strength, found.candidates, found.masks


def test_thinned_edges_lie_on_the_shapes_true_boundaries() -> None:
    strength, candidates, masks = run(EdgeParams())
    assert strength.shape == (HEIGHT, WIDTH)
    assert strength.dtype == np.float32
    assert strength.max() == pytest.approx(1.0)
    assert strength.min() == 0.0
    boundary, distance = truth(WIDTH, HEIGHT, SHAPES)
    found = strength > 0
    precision = float((distance[found] <= 1).mean())
    recall = float((chebyshev(found)[boundary] <= 1).mean())
    print(f"precision {precision:.4f}, recall {recall:.4f}, {found.sum()} edge pixels")
    assert precision >= 0.95
    assert recall >= 0.95
    assert not found[distance > 2].any()  # nothing in the flat regions
    # 16² points, all three candidates each: the empty ones dropped, repeats removed by NMS;
    # what is left is one mask per shape and the background
    points_inside = 0
    grid = (np.arange(16) + 0.5) / 16
    for y in grid * HEIGHT:
        for x in grid * WIDTH:
            points_inside += any(s(np.array(x), np.array(y)) > 0 for s in SHAPES)
    assert candidates == 3 * points_inside + (256 - points_inside)
    assert masks == len(SHAPES) + 1


def test_edge_nms_thins_to_one_pixel_across() -> None:
    thick, _, _ = run(EdgeParams(edge_nms=False))
    thinned, _, _ = run(EdgeParams())
    assert ((thinned > 0) <= (thick > 0)).all()  # thinning only removes
    assert (thinned > 0).sum() < 0.6 * (thick > 0).sum()
    # across the disc's left edge (centre row), exactly one pixel remains
    row = thinned[70, :70]
    assert (row > 0).sum() == 1
    assert abs(int(np.flatnonzero(row)[0]) - 30) <= 1  # the boundary is at x = 70 - 40


def test_no_masks_no_edges() -> None:
    decoder = ShapeDecoder(WIDTH, HEIGHT, [])
    strength, candidates, masks = run(EdgeParams(points_per_side=4), decoder)
    assert candidates == 16  # the background, which covers the image: no boundary in it
    assert masks == 1
    assert not strength.any()


def test_boundary_band_and_thin_by_hand() -> None:
    mask = torch.zeros(1, 7, 7, dtype=torch.bool)
    mask[0, 2:5, 2:5] = True
    band = boundary_band(mask, 1)[0].numpy()
    # dilation ≠ erosion: the 3×3 square's ring of 16 outside + its 8 border pixels
    expected = np.zeros((7, 7), dtype=bool)
    expected[1:6, 1:6] = True
    expected[3, 3] = False
    assert np.array_equal(band, expected)
    # a ridge two pixels wide across x: one pixel remains, on the side the gradient points
    strength = torch.zeros(5, 6)
    strength[:, 2:4] = 1.0
    kept = thin(strength, torch.ones(5, 6), torch.zeros(5, 6)).numpy()
    assert np.array_equal(kept.sum(axis=0), [0, 0, 0, 5, 0, 0])


@pytest.mark.slow  # two edge maps through the real model: not in `make test-fast`
def test_a_real_image_through_the_real_model_is_deterministic(
    fixture_model: EfficientSam, image_bytes: bytes
) -> None:
    rgb = decode_image(image_bytes)
    height, width = rgb.shape[:2]
    with torch.inference_mode():
        embedding = fixture_model.embed(resize_to_model(rgb)[None])
    crop = Crop((0, 0, width, height), embedding)
    params = EdgeParams(points_per_side=4)
    first = edge_map(fixture_model, [crop], width, height, params)
    second = edge_map(fixture_model, [crop], width, height, params)
    assert first.strength.shape == (height, width)
    assert np.array_equal(first.strength, second.strength)
    assert (first.candidates, first.masks) == (second.candidates, second.masks)
    assert 0 < first.masks <= first.candidates <= 48
    assert first.strength.max() == pytest.approx(1.0)
