"""Architecture hyper-parameters of the two EfficientSAM variants."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Variant = Literal["ti", "s"]
VARIANTS: tuple[Variant, ...] = ("ti", "s")


@dataclass(frozen=True)
class ModelConfig:
    variant: Variant
    encoder_dim: int
    encoder_heads: int
    encoder_depth: int = 12
    patch_size: int = 16
    img_size: int = 1024
    mlp_ratio: float = 4.0
    embed_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    max_points: int = 6
    num_multimask: int = 3
    upscaling_dims: tuple[int, ...] = (64, 32)
    iou_head_hidden_layers: int = 2
    hypernet_hidden_layers: int = 2

    @property
    def embedding_grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        return self.embedding_grid * (1 << len(self.upscaling_dims))


CONFIGS: dict[Variant, ModelConfig] = {
    "ti": ModelConfig(variant="ti", encoder_dim=192, encoder_heads=3),
    "s": ModelConfig(variant="s", encoder_dim=384, encoder_heads=6),
}

#: ImageNet statistics used to normalise RGB in [0, 1].
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
