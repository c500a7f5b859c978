"""Small building blocks shared by the encoder and the decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``attend(q, k, v)`` with tensors shaped ``[batch, heads, tokens, head_dim]``.
AttendFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def sdpa_attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention through PyTorch's fused kernels."""
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBase(nn.Module):
    """Base of every attention layer: the kernel is swappable via ``attend``.

    Benchmarks replace ``attend`` with an explicit-softmax baseline; the model
    itself always uses :func:`sdpa_attend`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attend: AttendFn = sdpa_attend


class MLP(nn.Module):
    """``hidden_layers`` × (Linear → activation), then a final Linear ``fc``.

    The parameter names (``layers.<i>.0``, ``fc``) follow the official
    checkpoint layout.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        hidden_layers: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * hidden_layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(dims[i], dims[i + 1]), activation())
            for i in range(hidden_layers)
        )
        self.fc = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        out: Tensor = self.fc(x)
        return out


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
