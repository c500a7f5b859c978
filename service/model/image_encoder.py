"""The ViT image encoder: 1024×1024 image → 256×64×64 embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.model._layers import AttentionBase, LayerNorm2d
from service.model.config import ModelConfig

#: Grid the absolute position embedding was pre-trained at (224 / 16).
PRETRAIN_GRID = 14


class ViTAttention(AttentionBase):
    """Global multi-head self-attention over all patch tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attend(q, k, v).transpose(1, 2).reshape(b, n, c)
        projected: Tensor = self.proj(out)
        return projected


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class ViTBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(x)
        return out


class ImageEncoder(nn.Module):
    """Plain ViT with a convolutional neck.

    Input: normalised images ``[B, 3, 1024, 1024]``.
    Output: embeddings ``[B, 256, 64, 64]``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.encoder_dim
        self.img_size = config.img_size
        self.grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, PRETRAIN_GRID * PRETRAIN_GRID + 1, dim))
        self.blocks = nn.ModuleList(
            ViTBlock(dim, config.encoder_heads, config.mlp_ratio)
            for _ in range(config.encoder_depth)
        )
        out = config.embed_dim
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def position_embedding(self) -> Tensor:
        """The pre-trained 14×14 grid (cls token dropped), bicubically resized."""
        grid = self.pos_embed[:, 1:].reshape(1, PRETRAIN_GRID, PRETRAIN_GRID, -1)
        if self.grid != PRETRAIN_GRID:
            grid = F.interpolate(
                grid.permute(0, 3, 1, 2),
                size=(self.grid, self.grid),
                mode="bicubic",
                align_corners=False,
            ).permute(0, 2, 3, 1)
        return grid

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"encoder expects {self.img_size}×{self.img_size}, got {tuple(x.shape)}"
            )
        x = self.patch_embed(x).permute(0, 2, 3, 1)  # B, H, W, C
        x = x + self.position_embedding().to(x.dtype)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        for block in self.blocks:
            x = block(x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        out: Tensor = self.neck(x)
        return out
