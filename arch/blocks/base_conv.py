"""Gated short convolution, BaseConv (Arora et al. 2023, "Zoology: Measuring and Improving Recall in
Efficient Language Models"; the short-convolution layer of Based, Arora et al. 2024).

    u, g = in_proj(x)                             (d -> 2 * d_inner, d_inner = expand * d; paper: d -> 4d)
    y    = silu(causal_conv1d_k(u)) * g           (depthwise, k = 3, with bias)
    out  = out_proj(y)                            (d_inner -> d)

Decode state: the last k - 1 inputs of the convolution [B, d_inner, k - 1].
"""

from __future__ import annotations

import torch
from torch import nn

from arch.blocks.init import init_depthwise_conv_
from arch.ops import causal_conv1d


class BaseConv(nn.Module):
    """Gated short convolution (module docstring). The conv is initialised as PyTorch's Conv1d
    (U(+-1/sqrt(k)) for weight and bias)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        expand: float = 2,
        kernel_size: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.d_inner, self.kernel_size, self.backend = int(expand * d_model), kernel_size, backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, kernel_size))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner)) if conv_bias else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_depthwise_conv_(self.conv_weight, self.conv_bias)

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        u, gate = self.in_proj(x).chunk(2, dim=-1)
        u, state = causal_conv1d(u, self.conv_weight, self.conv_bias, activation="silu", initial_state=state, backend=self.backend)
        return self.out_proj(u * gate), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_inner, self.kernel_size - 1, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.kernel_size - 1)
