"""Griffin / Hawk recurrent block with the RG-LRU (De et al. 2024, "Griffin: Mixing Gated Linear
Recurrences with Local Attention for Efficient Language Models").

    out = out_proj(gelu(W_y x) * RG-LRU(Conv1D_k(W_x x)))

RG-LRU, per channel (gates block-diagonal over n_heads blocks):

    r_t = sigmoid(BlockDiag_a(x_t)),   i_t = sigmoid(BlockDiag_x(x_t))
    log a_t = -c * r_t * softplus(Lambda)                     (c = 8)
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)

At the first position of a sequence (recurrentgemma's segment_pos == 0) the recurrence resets:
a_0 = 0 and the multiplier is 1, so h_0 = i_0 * x_0 whatever came before; in the forward pass
without a state and in the first ``step`` of a decode (state h None: no history yet).

Probe contract (`arch.probe`): G = the d_rnn channels of the recurrence, Dv = 1, v = the conv output x
entering the RG-LRU, A[c, t, s] = (prod_{l=s+1..t} a_{l,c}) sqrt(1 - a_{s,c}^2) i_{s,c} for s <= t (the
multiplier 1 at s = 0, the reset), so that o = h = sum_s A[t, s] x_s, before the GELU branch and out_proj.

Initialisation (google-deepmind/recurrentgemma `recurrentgemma/torch/layers.py`): the base decay
a = exp(-softplus(Lambda)) uniform in a^2 in [min_rad^2, max_rad^2] ([0.9, 0.999] in a), so
a_t = a^(c r_t); the gates' block-diagonal weights N(0, 1 / head_dim), biases 0; the depthwise conv
(Conv1D) w ~ N(0, 0.01 / k) (std 0.05 at k = 4), bias 0. The derivative of sqrt(1 - a_t^2) is clipped
at 1000 (it diverges as a_t -> 1). No weight decay on Lambda, the gates' biases and the conv.
Decode state: the conv's last k-1 inputs [B, d_rnn, k-1] and h [B, d_rnn] (None before the first token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import init_depthwise_conv_normal_, inverse_softplus, no_weight_decay
from arch.ops import causal_conv1d, diagonal_recurrence
from arch.ops.backend import accumulation_dtype
from arch.ops.implicit import segment_sum
from arch.probe import apply_head_mask


class _SqrtBoundedDerivative(torch.autograd.Function):
    """sqrt(x) whose derivative 1 / (2 sqrt(x)) = 1 / sqrt(4x) is capped at ``max_grad``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, max_grad: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.max_grad = max_grad
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * torch.rsqrt(torch.clamp(4 * x, min=ctx.max_grad**-2)), None


def sqrt_bounded_derivative(x: torch.Tensor, max_grad: float = 1000.0) -> torch.Tensor:
    """sqrt(x) with its derivative clipped at ``max_grad`` (Griffin's stabilised RG-LRU normaliser)."""
    return _SqrtBoundedDerivative.apply(x, max_grad)


class RGLRUBlock(nn.Module):
    """Griffin's recurrent block (module docstring). d_rnn defaults to d_model (RecurrentGemma's
    lru_width); the gates are block-diagonal with ``n_heads`` blocks of d_rnn / n_heads.

    Probe (`arch.probe`): G = d_rnn channels, v = the conv output entering the RG-LRU, Dv = 1,
    A[t, s] = (prod_{l=s+1..t} a_l) sqrt(1 - a_s^2) i_s (multiplier 1 at s = 0); o = h before the GELU branch.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_rnn: int | None = None,
        n_heads: int = 4,
        d_conv: int = 4,
        c: float = 8.0,
        min_rad: float = 0.9,
        max_rad: float = 0.999,
        max_sqrt_grad: float = 1000.0,
        conv_variance_scale: float = 0.01,
        backend: str = "auto",
    ):
        super().__init__()
        self.d_rnn = d_rnn or d_model
        if self.d_rnn % n_heads:
            raise ValueError(f"d_rnn={self.d_rnn} must be a multiple of n_heads={n_heads}")
        self.n_heads, self.head_dim, self.d_conv = n_heads, self.d_rnn // n_heads, d_conv
        self.c, self.min_rad, self.max_rad, self.max_sqrt_grad, self.backend = c, min_rad, max_rad, max_sqrt_grad, backend
        self.conv_variance_scale = conv_variance_scale
        self.y_proj = nn.Linear(d_model, self.d_rnn)
        self.x_proj = nn.Linear(d_model, self.d_rnn)
        self.conv_weight = nn.Parameter(torch.empty(self.d_rnn, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.d_rnn))
        # the input and recurrence gates' block-diagonal weights, stacked: [2, H, head_dim, head_dim]
        self.gate_weight = nn.Parameter(torch.empty(2, n_heads, self.head_dim, self.head_dim))
        self.gate_bias = nn.Parameter(torch.empty(2, n_heads, self.head_dim))
        self.Lambda = nn.Parameter(torch.empty(self.d_rnn))
        self.out_proj = nn.Linear(self.d_rnn, d_model)
        self.head_mask: torch.Tensor | None = None  # [d_rnn], `arch.probe`
        no_weight_decay(self.conv_weight, self.conv_bias, self.gate_bias, self.Lambda)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_depthwise_conv_normal_(self.conv_weight, self.conv_bias, self.conv_variance_scale)
        nn.init.normal_(self.gate_weight, std=self.head_dim**-0.5)
        nn.init.zeros_(self.gate_bias)
        a_squared = torch.empty(self.d_rnn).uniform_(self.min_rad**2, self.max_rad**2)
        neg_log_a = -0.5 * torch.log(a_squared)  # softplus(Lambda) = -log a
        self.Lambda.copy_(inverse_softplus(neg_log_a))

    def base_decay(self) -> torch.Tensor:
        """a = exp(-softplus(Lambda)) [d_rnn]: the decay at recurrence gate r_t = 1/c."""
        return torch.exp(-F.softplus(self.Lambda))

    def _gates(self, x: torch.Tensor, reset: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """log a_t and the input's coefficient sqrt(1 - a_t^2) i_t, [B, T, d_rnn], from x [B, T, d_rnn];
        reset: x starts the sequence (multiplier 1 at t = 0)."""
        xh = x.unflatten(-1, (self.n_heads, self.head_dim))
        gate_logits = torch.einsum("bthi,ghij->gbthj", xh, self.gate_weight) + self.gate_bias[:, None, None]
        gate_x, gate_a = torch.sigmoid(gate_logits).flatten(-2).unbind(0)
        log_a = -self.c * gate_a * F.softplus(self.Lambda)
        multiplier = sqrt_bounded_derivative(-torch.expm1(2 * log_a), self.max_sqrt_grad)  # sqrt(1 - a^2)
        if reset:  # segment_pos == 0: a_0 = 0 (nothing to carry) and multiplier 1
            multiplier = torch.cat([torch.ones_like(multiplier[:, :1]), multiplier[:, 1:]], dim=1)
        return log_a, multiplier * gate_x

    def _rg_lru(self, x: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """RG-LRU over x [B, T, d_rnn] from h0 [B, d_rnn]; h0 None: x starts the sequence (reset at t = 0)."""
        log_a, coefficient = self._gates(x, reset=h0 is None)
        return diagonal_recurrence(log_a, coefficient * x, initial_state=h0)

    def _conv(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        return causal_conv1d(
            self.x_proj(x), self.conv_weight, self.conv_bias,
            initial_state=None if state is None else state["conv"], backend=self.backend,
        )

    def _mix(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        u, conv_state = self._conv(x, state)
        h, rnn_state = self._rg_lru(u, None if state is None else state["h"])
        h = apply_head_mask(h.unsqueeze(-1), self.head_mask).squeeze(-1)
        return self.out_proj(F.gelu(self.y_proj(x)) * h), {"conv": conv_state, "h": rnn_state}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o = h [B, T, d_rnn, 1]: the RG-LRU's output, before the GELU branch and out_proj."""
        return self._rg_lru(self._conv(x, None)[0], None)[0].unsqueeze(-1)

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, d_rnn, T, T], v = the conv output [B, T, d_rnn, 1]), materialised (probing only):
        A[c, t, s] = exp(sum_{l=s+1..t} log a_{l,c}) sqrt(1 - a_{s,c}^2) i_{s,c}, the multiplier 1 at s = 0."""
        u = self._conv(x, None)[0]
        log_a, coefficient = self._gates(u, reset=True)
        acc = accumulation_dtype(u)
        a = torch.exp(segment_sum(log_a.to(acc).transpose(1, 2))) * coefficient.to(acc).transpose(1, 2).unsqueeze(-2)
        return a, u.unsqueeze(-1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "conv": torch.zeros(batch_size, self.d_rnn, self.d_conv - 1, device=device, dtype=dtype),
            "h": None,  # no history: the first step starts the sequence (reset)
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.d_rnn * self.d_conv
