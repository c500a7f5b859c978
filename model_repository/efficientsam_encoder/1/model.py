"""Triton Python backend: the project's EfficientSAM image encoder.

Inputs are images already resized to 1024x1024 by ``efficientsam_preprocess``
(``pixels``, ``[B, 3, 1024, 1024]``, RGB in [0, 1] as FP32/FP16, or x255 as
UINT8), on the host or, with ``FORCE_CPU_ONLY_INPUT_TENSORS`` "no", already on
the GPU (DLPack, no copy); the output is ``embeddings`` ``[B, 256, 64, 64]`` in
the configured dtype. All requests of one execution run as one batch; a
malformed request gets its own ``TritonError`` and does not fail the others.

The checkpoint path comes from ``ESAM_CHECKPOINT`` or the ``checkpoint``
parameter of ``config.pbtxt``; ``precision`` (fp32, bf16, fp16) applies on GPUs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from service.errors import CheckpointError
from service.model import load_named

IMAGE_SHAPE = (3, 1024, 1024)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        checkpoint = os.environ.get("ESAM_CHECKPOINT") or params.get("checkpoint", "")
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            self.precision = params.get("precision", "fp32")
        else:
            self.device = torch.device("cpu")
            self.precision = "fp32"
        try:
            model = load_named(checkpoint, params.get("variant", "ti"))
        except CheckpointError as exc:
            raise pb_utils.TritonModelException(
                f"efficientsam_encoder: {exc}; set the 'checkpoint' parameter in config.pbtxt or "
                "ESAM_CHECKPOINT"
            ) from exc
        self.model = model.to(self.device).eval()
        self.input_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_input_config_by_name(config, "pixels")["data_type"]
        )
        self.output_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "embeddings")["data_type"]
        )

    def _check(self, pixels: torch.Tensor) -> str | None:
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != IMAGE_SHAPE:
            return f"pixels must be [N, 3, 1024, 1024], got {list(pixels.shape)}"
        if pixels.dtype != torch.uint8 and not bool(torch.isfinite(pixels).all()):
            return "pixels contain NaN or infinity"
        return None

    @staticmethod
    def _tensor(request: Any) -> torch.Tensor:
        tensor = pb_utils.get_input_tensor_by_name(request, "pixels")
        if tensor.is_cpu():
            return torch.from_numpy(tensor.as_numpy())
        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())  # stays on the GPU

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        batch: list[torch.Tensor] = []
        owners: list[tuple[int, int]] = []  # (request index, images in it)
        for index, request in enumerate(requests):
            pixels = self._tensor(request)
            problem = self._check(pixels)
            if problem is not None:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG),
                )
                continue
            batch.append(pixels.to(self.device))
            owners.append((index, pixels.shape[0]))
        if not batch:
            return responses

        stacked = torch.cat(batch)
        stacked = stacked.float().div_(255.0) if stacked.dtype == torch.uint8 else stacked.float()
        try:
            with torch.inference_mode():
                embeddings = self.model.embed(stacked, self.precision).cpu().numpy()
        except Exception as exc:  # noqa: BLE001 - reported per request, the server lives on
            for index, _ in owners:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"encoder failed: {exc}")
                )
            return responses

        offset = 0
        for index, count in owners:
            out = embeddings[offset : offset + count].astype(self.output_dtype)
            offset += count
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("embeddings", out)]
            )
        return responses

    def finalize(self) -> None:
        self.model = None
