"""EfficientSAM: the image encoder plus the prompt encoder and mask decoder."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.model.config import PIXEL_MEAN, PIXEL_STD, ModelConfig
from service.model.image_encoder import ImageEncoder
from service.model.mask_decoder import MaskDecoder
from service.model.prompt_encoder import LABEL_PADDING, PromptEncoder

Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST_DTYPES: dict[Precision, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """Mixed precision for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision]):
        yield


class EfficientSam(nn.Module):
    """The whole model. Parameter names follow the official checkpoints."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)
        self.pixel_mean: Tensor
        self.pixel_std: Tensor
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def embed(self, pixels: Tensor, precision: Precision = "fp32") -> Tensor:
        """Encode a batch of resized RGB images in [0, 1].

        ``pixels``: ``[B, 3, 1024, 1024]`` float; returns float32 ``[B, 256, 64, 64]``.
        """
        x = (pixels.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
        with autocast(self.device, precision):
            out: Tensor = self.image_encoder(x)
        return out.float()

    def decode(
        self,
        embedding: Tensor,
        points: Tensor,
        labels: Tensor,
        multimask: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Decode ``N`` prompts against one image embedding.

        ``embedding``: ``[1, 256, 64, 64]``. ``points``: ``[N, P, 2]`` (x, y) in the
        1024×1024 model frame, ``labels``: ``[N, P]``; ``P`` ≤ ``config.max_points``
        and shorter prompts are padded with label -1 as the reference does.
        Returns low-res logits ``[N, K, 256, 256]`` and IoU predictions ``[N, K]``,
        ``K`` = 3 for multimask output (mask tokens 1-3), else 1 (token 0).
        """
        logits, iou = self.decode_all(embedding, points, labels)
        if multimask:
            return logits[:, 1:], iou[:, 1:]
        return logits[:, :1], iou[:, :1]

    def decode_all(
        self, embedding: Tensor, points: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Every mask token of ``N`` prompts: logits ``[N, 4, 256, 256]``, IoU ``[N, 4]``
        (token 0: the single-mask output, 1-3: the multimask candidates).

        ``embedding``: ``[1, 256, 64, 64]`` for one image, or ``[N, 256, 64, 64]``, one
        per prompt (prompts of several images in one pass); the rest as :meth:`decode`.
        """
        points, labels = pad_prompts(
            points.to(self.device, torch.float32),
            labels.to(self.device, torch.float32),
            self.config.max_points,
        )
        tokens = self.prompt_encoder(points, labels)
        logits, iou = self.mask_decoder(
            embedding.to(self.device, torch.float32), self.prompt_encoder.dense_positions(), tokens
        )
        return logits, iou


def pad_prompts(points: Tensor, labels: Tensor, max_points: int) -> tuple[Tensor, Tensor]:
    """``[N, P, 2]`` points and ``[N, P]`` labels → ``max_points`` points each, padded as
    the reference pads (coordinate -1, label -1); prompts of any length then batch."""
    num_points = points.shape[1]
    if num_points > max_points:
        raise ValueError(f"at most {max_points} points per prompt, got {num_points}")
    if num_points < max_points:
        points = F.pad(points, (0, 0, 0, max_points - num_points), value=-1.0)
        labels = F.pad(labels, (0, max_points - num_points), value=float(LABEL_PADDING))
    return points, labels


#: which masks of a prompt are wanted: the three multimask candidates, the single-mask
#: output, or only the best of the three by predicted IoU
Candidates = Literal["multimask", "single", "best"]


def ranked_candidates(logits: Tensor, iou: Tensor, candidates: Candidates) -> tuple[Tensor, Tensor]:
    """:meth:`EfficientSam.decode_all`'s ``[N, 4, H, W]`` logits and ``[N, 4]`` IoU → the
    candidates asked for, best first (ties keep token order): ``[N, K, H, W]``, ``[N, K]``."""
    if candidates == "single":
        return logits[:, :1], iou[:, :1]
    logits, iou = logits[:, 1:], iou[:, 1:]
    order = torch.argsort(iou, dim=1, descending=True, stable=True)
    if candidates == "best":
        order = order[:, :1]
    index = order[:, :, None, None].expand(-1, -1, *logits.shape[2:])
    return torch.gather(logits, 1, index), torch.gather(iou, 1, order)
