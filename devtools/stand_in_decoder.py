"""A Triton Python model with ``efficientsam_decoder``'s interface that answers compact
masks at once (benchmarks only).

``LocalTriton(stand_in_decoder=True)`` puts it in place of the decoder's ``model.py``:
the same config (inputs, outputs, residency protocol: "not resident" until an
embedding was sent), and for every prompt discs around its first point (radius 8 %,
12 % and 16 % of the shorter side; the single-mask output the middle one), as the run
lengths the real decoder returns. The fixture's random weights make every mask a
speckle of ~250,000 runs at 1080p (0.75 MB of RLE per click); a real object's mask has
hundreds to a few thousand. With the stand-in, ``bench/clicks.py`` measures the
gateway's own CPU per click for masks of that kind.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from service.model.masks import run_lengths

RADII = (0.08, 0.12, 0.16)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.resident: set[str] = set()

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._answer(request) for request in requests]

    def _answer(self, request: Any) -> Any:
        parameters = json.loads(request.parameters() or "{}")
        key, candidates = parameters["image"], parameters.get("candidates", "multimask")
        if pb_utils.get_input_tensor_by_name(request, "embedding") is not None:
            self.resident.add(key)
        if key not in self.resident:
            empty = np.zeros((1, 0), dtype=np.int32)
            return pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("status", np.ones((1, 1), dtype=np.int32)),
                    pb_utils.Tensor("scores", np.zeros((1, 0, 0), dtype=np.float32)),
                    pb_utils.Tensor("rle_lengths", empty),
                    pb_utils.Tensor("rle_counts", empty),
                ]
            )
        points = pb_utils.get_input_tensor_by_name(request, "points").as_numpy()[0]
        height, width = (
            int(v)
            for v in pb_utils.get_input_tensor_by_name(request, "image_size").as_numpy().reshape(-1)
        )
        radii = {"multimask": RADII, "single": RADII[1:2], "best": RADII[2:]}[candidates]
        ys, xs = np.ogrid[:height, :width]
        masks = []
        for prompt in points:
            cx, cy = prompt[0][0] * width / 1024, prompt[0][1] * height / 1024
            for radius in radii:
                r = radius * min(width, height)
                masks.append((xs - cx) ** 2 + (ys - cy) ** 2 <= r * r)
        lengths, counts = run_lengths(torch.from_numpy(np.stack(masks)))
        scores = np.tile(np.linspace(0.9, 0.7, len(radii), dtype=np.float32), (len(points), 1))
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("status", np.zeros((1, 1), dtype=np.int32)),
                pb_utils.Tensor("scores", scores[None]),
                pb_utils.Tensor("rle_lengths", lengths.numpy().astype(np.int32)[None]),
                pb_utils.Tensor("rle_counts", counts.numpy().astype(np.int32)[None]),
            ]
        )
