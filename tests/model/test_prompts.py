"""Prompt validation and conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import InvalidPromptError
from service.model.prompts import Prompt, prompts_to_arrays

W, H = 800, 400


def test_points_are_scaled_and_padded() -> None:
    points, labels = prompts_to_arrays([Prompt(points=[[400, 100]], labels=[1])], W, H)
    assert points.shape == (1, 6, 2)
    np.testing.assert_allclose(points[0, 0], [400 * 1024 / W, 100 * 1024 / H])
    np.testing.assert_array_equal(points[0, 1:], -1.0)
    np.testing.assert_array_equal(labels[0], [1, -1, -1, -1, -1, -1])


def test_box_corners_come_first_with_labels_2_and_3() -> None:
    prompt = Prompt(points=[[50, 60]], labels=[0], box=[10, 20, 30, 40])
    points, labels = prompts_to_arrays([prompt], W, H)
    np.testing.assert_array_equal(labels[0, :3], [2, 3, 0])
    np.testing.assert_allclose(points[0, 0], [10 * 1024 / W, 20 * 1024 / H])
    np.testing.assert_allclose(points[0, 1], [30 * 1024 / W, 40 * 1024 / H])
    np.testing.assert_allclose(points[0, 2], [50 * 1024 / W, 60 * 1024 / H])


def test_box_alone_is_a_prompt() -> None:
    _, labels = prompts_to_arrays([Prompt(box=[0, 0, W, H])], W, H)
    np.testing.assert_array_equal(labels[0, :2], [2, 3])


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (Prompt(), r"prompts\[0\]: a prompt needs points or a box"),
        (Prompt(points=[[1, 1]], labels=[]), r"prompts\[0\]\.labels: 0 labels for 1 points"),
        (Prompt(points=[[1, 1]], labels=[2]), r"prompts\[0\]\.labels\[0\]: must be 1"),
        (Prompt(points=[[W + 1, 1]], labels=[1]), r"prompts\[0\]\.points\[0\]: x=801 .*width 800"),
        (Prompt(points=[[1, -2]], labels=[1]), r"prompts\[0\]\.points\[0\]: y=-2 .*height 400"),
        (Prompt(points=[[math.nan, 1]], labels=[1]), r"points\[0\]: x is not a finite"),
        (Prompt(points=[[1, math.inf]], labels=[1]), r"points\[0\]: y is not a finite"),
        (Prompt(points=[[1, 2, 3]], labels=[1]), r"points\[0\]: a point is \[x, y\]"),
        (Prompt(box=[30, 20, 10, 40]), r"prompts\[0\]\.box: x1 \(10\) must be greater than x0"),
        (Prompt(box=[10, 20, 10, 40]), r"prompts\[0\]\.box: x1 \(10\) must be greater"),
        (Prompt(box=[10, 40, 30, 20]), r"prompts\[0\]\.box: y1 \(20\) must be greater"),
        (Prompt(box=[10, 20, 30]), r"prompts\[0\]\.box: a box is"),
        (Prompt(points=[[1, 1]] * 7, labels=[1] * 7), r"7 points .*at most 6"),
        (Prompt(points=[[1, 1]] * 5, labels=[1] * 5, box=[0, 0, 5, 5]), r"7 points \(a box"),
    ],
)
def test_errors_name_the_field(prompt: Prompt, message: str) -> None:
    with pytest.raises(InvalidPromptError, match=message):
        prompts_to_arrays([prompt], W, H)


def test_the_failing_prompt_is_named_by_index() -> None:
    good = Prompt(points=[[1, 1]], labels=[1])
    with pytest.raises(InvalidPromptError, match=r"prompts\[1\]\.points\[0\]"):
        prompts_to_arrays([good, Prompt(points=[[-1, 1]], labels=[1])], W, H)


def test_no_prompts_is_an_error() -> None:
    with pytest.raises(InvalidPromptError, match="at least one prompt"):
        prompts_to_arrays([], W, H)


def test_six_points_are_allowed() -> None:
    points, labels = prompts_to_arrays(
        [Prompt(points=[[1, 1]] * 4, labels=[1] * 4, box=[0, 0, 9, 9])], W, H
    )
    assert (labels >= 0).sum() == 6
    assert points.shape == (1, 6, 2)


@pytest.mark.parametrize(
    ("prompt", "ambiguous"),
    [
        (Prompt(points=[(5, 5)], labels=[1]), True),
        (Prompt(points=[(5, 5)], labels=[0]), False),
        (Prompt(points=[(5, 5), (9, 9)], labels=[1, 1]), False),
        (Prompt(points=[(5, 5), (9, 9)], labels=[1, 0]), False),
        (Prompt(box=(1, 1, 9, 9)), False),
        (Prompt(points=[(5, 5)], labels=[1], box=(1, 1, 9, 9)), False),
    ],
)
def test_one_positive_point_alone_is_the_ambiguous_click(prompt: Prompt, ambiguous: bool) -> None:
    assert prompt.ambiguous is ambiguous
