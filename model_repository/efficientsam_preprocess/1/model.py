"""Triton Python backend: an image file's bytes → the encoder's input, beside the encoder.

Input ``image`` (BYTES, one encoded image per request); outputs ``pixels``
``[3, S, S]`` (S from the config's ``pixels`` dims; RGB in [0, 1], the dtype of the
config, x255 for UINT8) and ``size`` (INT32 width, height of the upright image). Decoding, EXIF orientation,
resizing and scaling are the project's one implementation
(``service.model.preprocess.load_for_model``), the same code the embedded encoder
runs. An image that cannot be decoded gets its own ``TritonError`` with code
``INVALID_ARG`` (the gateway answers 422 ``invalid_image``); the other requests of
the batch are unaffected.

On a GPU instance ``pixels`` is handed to the next model on the device (DLPack),
so it never travels back to the host. With the ``gpu_jpeg_decode`` parameter
"true", JPEGs are decoded by nvJPEG (``torchvision.io.decode_jpeg`` on CUDA) and
resized there (``resize_chw_to_model``, the reference's steps, tested against the host
path); other formats use the CPU path.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from service.errors import EsamError
from service.model.preprocess import load_for_model, orient_chw, read_header, resize_chw_to_model


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_pixels = int(params.get("max_pixels", "50000000"))
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        self.gpu_jpeg = self.device.type == "cuda" and params.get("gpu_jpeg_decode") == "true"
        pixels = pb_utils.get_output_config_by_name(config, "pixels")
        self.pixels_dtype = pb_utils.triton_string_to_numpy(pixels["data_type"])
        self.img_size = int(pixels["dims"][-1])  # the config's [3, S, S]: the encoder's input
        self.torch_dtype = {
            np.float32: torch.float32,
            np.float16: torch.float16,
            np.uint8: torch.uint8,
        }[np.dtype(self.pixels_dtype).type]

    def _load(self, data: bytes) -> tuple[torch.Tensor, int, int]:
        """``[3, S, S]`` float32 in [0, 1] and the upright size."""
        header = read_header(data, self.max_pixels)
        if self.gpu_jpeg and header.format == "JPEG":
            pixels = _gpu_jpeg(data, self.device, header.orientation, self.img_size)
        else:
            pixels = load_for_model(data, self.max_pixels, self.img_size)
        return pixels, header.width, header.height

    def _cast(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.torch_dtype == torch.uint8:
            return pixels.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return pixels.to(self.torch_dtype)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            if images.size != 1:
                responses.append(_refuse(f"send one image per request, not {images.size}"))
                continue
            try:
                pixels, width, height = self._load(bytes(images[0]))
            except EsamError as exc:
                responses.append(_refuse(f"{exc.code}: {exc.message}"))
                continue
            batch = self._cast(pixels.to(self.device))[None]
            if self.device.type == "cuda":
                out = pb_utils.Tensor.from_dlpack("pixels", torch.utils.dlpack.to_dlpack(batch))
            else:
                out = pb_utils.Tensor("pixels", batch.numpy())
            size = pb_utils.Tensor("size", np.array([[width, height]], dtype=np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out, size]))
        return responses


def _refuse(message: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def _gpu_jpeg(data: bytes, device: torch.device, orientation: int, size: int) -> torch.Tensor:
    """nvJPEG decode, EXIF orientation and the reference's resize, all on the GPU."""
    from torchvision.io import ImageReadMode, decode_jpeg  # only on GPU deployments

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rgb = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)  # [3, H, W] uint8
    return resize_chw_to_model(orient_chw(rgb, orientation), size)
