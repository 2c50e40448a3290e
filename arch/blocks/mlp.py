"""Channel mixers: SwiGLU (Shazeer 2020), the GeLU MLP (GPT-2) and the identity (no MLP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _round(n: float, multiple: int) -> int:
    return multiple * max(1, round(n / multiple))


class SwiGLU(nn.Module):
    """y = W_out (silu(x W_gate) * (x W_up)); hidden defaults to 8/3 d_model (rounded to ``multiple_of``)
    so the parameter count matches a 4x GeLU MLP."""

    def __init__(self, d_model: int, layer_idx: int = 0, hidden: int | None = None, multiple_of: int = 32, bias: bool = False):
        super().__init__()
        hidden = hidden or _round(8 * d_model / 3, multiple_of)
        self.in_proj = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.out_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.in_proj(x).chunk(2, dim=-1)
        return self.out_proj(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """y = W_out gelu(x W_in), hidden = ``expansion`` * d_model."""

    def __init__(self, d_model: int, layer_idx: int = 0, expansion: float = 4.0, bias: bool = False):
        super().__init__()
        hidden = int(expansion * d_model)
        self.in_proj = nn.Linear(d_model, hidden, bias=bias)
        self.out_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.gelu(self.in_proj(x)))


class Identity(nn.Module):
    """No channel mixing: the layer is the sequence mixer alone (Zoology's MQAR models)."""

    def __init__(self, d_model: int, layer_idx: int = 0):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
