"""Two-way transformer mask decoder: embedding + prompt tokens → mask logits and IoU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from service.model._layers import MLP, AttentionBase
from service.model.config import ModelConfig


class TokenAttention(AttentionBase):
    """Multi-head attention with separate q/k/v projections, optionally narrowed."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1) -> None:
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Inputs ``[B, tokens, C]``; a batch of 1 broadcasts against the others' B (its
        projections are computed once, then shared as a view)."""
        heads = [
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
        ]
        batch = max(t.shape[0] for t in heads)
        out = self.attend(*(t.expand(batch, -1, -1, -1) for t in heads))
        b, h, n, d = out.shape
        projected: Tensor = self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
        return projected


class TwoWayBlock(nn.Module):
    """Tokens attend to themselves and to the image; the image attends back to the tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool) -> None:
        super().__init__()
        self.skip_first_pe = skip_first_pe
        self.self_attn = TokenAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, heads, downsample=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, hidden_layers=1)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, heads, downsample=2)

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        if not self.skip_first_pe:
            queries = queries + query_pe
        queries = self.norm1(queries + self.self_attn(queries, queries, queries))

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.layers = nn.ModuleList(
            TwoWayBlock(dim, config.decoder_heads, config.decoder_mlp_dim, skip_first_pe=i == 0)
            for i in range(config.decoder_depth)
        )
        self.final_attn_token_to_image = TokenAttention(dim, config.decoder_heads, downsample=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``image`` and ``image_pe`` are ``[N, HW, C]`` or ``[1, HW, C]`` (shared by every
        prompt); ``tokens`` is ``[N, T, C]``."""
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, image_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class MaskDecoder(nn.Module):
    """Predicts 4 masks (token 0: single-mask output, 1-3: multimask) and their IoU."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_mask_tokens = config.num_multimask + 1
        self.transformer = TwoWayTransformer(config)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)

        layers: list[nn.Module] = []
        in_dim = dim
        for i, out_dim in enumerate(config.upscaling_dims):
            last = i == len(config.upscaling_dims) - 1
            layers.append(
                nn.Sequential(
                    nn.ConvTranspose2d(in_dim, out_dim, kernel_size=2, stride=2),
                    nn.Identity() if last else nn.GroupNorm(1, out_dim),
                    nn.GELU(),
                )
            )
            in_dim = out_dim
        self.final_output_upscaling_layers = nn.ModuleList(layers)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, in_dim, hidden_layers=config.hypernet_hidden_layers)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, dim, self.num_mask_tokens, hidden_layers=config.iou_head_hidden_layers
        )

    def forward(
        self, image: Tensor, image_pe: Tensor, prompt_tokens: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Decode every prompt against one image.

        ``image``: ``[1, C, H, W]`` (or ``[N, C, H, W]``, one per prompt);
        ``image_pe``: ``[1, C, H, W]``; ``prompt_tokens``: ``[N, P, C]``.
        Returns logits ``[N, 4, 4H, 4W]`` and IoU predictions ``[N, 4]``.
        """
        n = prompt_tokens.shape[0]
        _, c, h, w = image.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(n, -1, -1), prompt_tokens], dim=1)

        # one image for every prompt stays a batch of 1: the first block's projections of
        # it are computed once; the image-to-token attention makes it one per prompt
        src = image.flatten(2).transpose(1, 2)
        pos = image_pe.flatten(2).transpose(1, 2)
        hs, src = self.transformer(src, pos, tokens)
        src = src.expand(n, -1, -1)

        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        upscaled = src.transpose(1, 2).reshape(n, c, h, w)
        for layer in self.final_output_upscaling_layers:
            upscaled = layer(upscaled)
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, uc, uh, uw = upscaled.shape
        masks = (hyper @ upscaled.reshape(n, uc, uh * uw)).reshape(n, -1, uh, uw)
        iou: Tensor = self.iou_prediction_head(iou_token_out)
        return masks, iou
