"""Prompt encoder: points and box corners → sparse tokens; dense positional grid."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from service.model.config import ModelConfig

#: Point labels understood by the prompt encoder.
LABEL_PADDING = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class RandomFourierPositions(nn.Module):
    """Positional encoding with a fixed random Gaussian projection."""

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.positional_encoding_gaussian_matrix = nn.Parameter(
            torch.randn(2, num_feats), requires_grad=False
        )

    def encode(self, coords01: Tensor) -> Tensor:
        """Encode ``[..., 2]`` coordinates normalised to [0, 1] (x, y)."""
        projected = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, size: int) -> Tensor:
        """Dense encoding of the centres of a ``size``×``size`` grid: ``[C, size, size]``."""
        device = self.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        return self.encode(torch.stack([xs, ys], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.img_size = config.img_size
        self.grid_size = config.embedding_grid
        self.pe_layer = RandomFourierPositions(dim // 2)
        self.invalid_points = nn.Embedding(1, dim)
        self.point_embeddings = nn.Embedding(1, dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, dim)

    def dense_positions(self) -> Tensor:
        """``[1, C, 64, 64]`` positional encoding of the image embedding grid."""
        return self.pe_layer.grid(self.grid_size).unsqueeze(0)

    def forward(self, points: Tensor, labels: Tensor) -> Tensor:
        """Embed ``points [N, P, 2]`` (1024-space pixels) with ``labels [N, P]``.

        Returns ``[N, P, C]``. Background points (label 0) carry position only.
        """
        coords = (points + 0.5) / self.img_size
        tokens = self.pe_layer.encode(coords.to(torch.float32)).to(points.dtype)
        labels = labels[..., None]
        for label, table in (
            (LABEL_PADDING, self.invalid_points),
            (LABEL_FOREGROUND, self.point_embeddings),
            (LABEL_BOX_TOP_LEFT, self.bbox_top_left_embeddings),
            (LABEL_BOX_BOTTOM_RIGHT, self.bbox_bottom_right_embeddings),
        ):
            tokens = tokens + table.weight * (labels == label).to(tokens.dtype)
        return tokens
