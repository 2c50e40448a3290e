"""Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality"), its SSD layer run on the gated-linear-attention op.

    z, xBC, dt = in_proj(h)                         (d_inner, d_inner + 2N, H; d_inner = expand * d)
    x, B, C    = silu(causal_conv1d_k(xBC))         (depthwise, k = d_conv = 4; B, C shared by heads)
    dt         = softplus(dt + dt_bias)             [H]
    A          = -exp(A_log)                        (one scalar per head)
    s_t        = exp(dt_t A) s_{t-1} + B_t^T (dt_t x_t),   y_t = C_t s_t + D x_t    (per head, s [N, P])
    out        = out_proj(RMSNorm(y * silu(z)))     (gated RMSNorm, norm after the gate)

Probe contract (`arch.probe`): G = the H heads, v = x per head [B, T, H, P] (after the conv and SiLU),
A[h, t, s] = (C_t . B_s) exp(sum_{l=s+1..t} dt_{l,h} A_h) dt_{s,h} for s <= t, plus D_h on the diagonal,
SSD's masked attention form; o = y per head, before the gate, the norm and out_proj.

SSD is gated linear attention with q = C, k = B, v = dt * x, log_decay = dt * A (a scalar per head)
and scale 1: `arch.ops.gla.gated_linear_attention`. Heads of ``head_dim`` P channels (64 in the paper).
Decode state: the last d_conv - 1 inputs of the convolution [B, d_inner + 2N, d_conv - 1] and the
SSM state [B, H, N, P].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import dt_bias, init_depthwise_conv_, no_weight_decay
from arch.ops import causal_conv1d, gated_linear_attention, gla_step
from arch.ops.backend import accumulation_dtype
from arch.ops.implicit import decayed_dot_product
from arch.probe import apply_head_mask


class Mamba2(nn.Module):
    """Mamba-2 mixer (module docstring), one group of B/C shared by all heads.

    Initialisation (mamba_ssm's Mamba2): A ~ U[1, 16] per head, D = 1, dt_bias = softplus^-1(dt) with
    dt ~ logU[dt_min, dt_max], the depthwise conv as PyTorch's Conv1d (U(+-1/sqrt(d_conv))).

    Probe (`arch.probe`): G = heads, v = x [B, T, H, head_dim], A = SSD's (C_t . B_s) exp(sum_{l=s+1..t}
    dt_l A) dt_s plus D on the diagonal; o = y + D x per head, before the gated RMSNorm and out_proj.
    """

    # mamba_ssm's `_init_weights` keeps PyTorch's default Linear init (out_proj: Kaiming-uniform over
    # sqrt(residual branches)); the language model honours this flag instead of its N(0, init_std)
    default_linear_init = True

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        d_state: int = 64,
        d_conv: int = 4,
        expand: float = 2,
        head_dim: int = 64,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        norm_eps: float = 1e-5,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = 16,
        backend: str = "auto",
    ):
        super().__init__()
        self.d_inner = int(expand * d_model)
        if self.d_inner % head_dim:
            raise ValueError(f"d_inner={self.d_inner} (expand * d_model) must be a multiple of head_dim={head_dim}")
        self.head_dim, self.n_heads, self.d_state, self.d_conv = head_dim, self.d_inner // head_dim, d_state, d_conv
        self.conv_dim = self.d_inner + 2 * d_state
        self.A_init_range, self.dt_min, self.dt_max = tuple(A_init_range), dt_min, dt_max
        self.chunk_size, self.backend = chunk_size, backend
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.n_heads, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim)) if conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        no_weight_decay(self.dt_bias, self.A_log, self.D)  # as mamba_ssm's Mamba2
        self.norm = nn.RMSNorm(self.d_inner, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.head_mask: torch.Tensor | None = None  # [n_heads], `arch.probe`
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_depthwise_conv_(self.conv_weight, self.conv_bias)
        self.A_log.copy_(torch.empty(self.n_heads).uniform_(*self.A_init_range).log())
        self.D.fill_(1.0)
        self.dt_bias.copy_(dt_bias(self.n_heads, self.dt_min, self.dt_max))

    def _inputs(self, h: torch.Tensor, state: dict | None):
        """x [B, T, H, P], B, C [B, T, N], dt [B, T, H] (after the softplus), the gate z and the new conv state."""
        z, xBC, dt = self.in_proj(h).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC, conv_state = causal_conv1d(
            xBC, self.conv_weight, self.conv_bias, activation="silu",
            initial_state=None if state is None else state["conv"], backend=self.backend,
        )
        x, B, C = xBC.split([self.d_inner, self.d_state, self.d_state], dim=-1)
        x = x.unflatten(-1, (self.n_heads, self.head_dim))  # [B, T, H, P]
        return x, B, C, F.softplus(dt + self.dt_bias), z, conv_state

    def _pre_projection(self, h: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """o = y + D x [B, T, H, P] (before the gate), z and the new state."""
        batch, length, _ = h.shape
        x, B, C, dt, z, conv_state = self._inputs(h, state)
        log_decay = dt * -torch.exp(self.A_log)
        heads = (batch, length, self.n_heads, self.d_state)
        q, k = C.unsqueeze(2).expand(heads).contiguous(), B.unsqueeze(2).expand(heads).contiguous()
        v = x * dt.unsqueeze(-1)
        if state is None or length > 1:
            y, ssm_state = gated_linear_attention(
                q, k, v, log_decay, scale=1.0, initial_state=None if state is None else state["ssm"],
                chunk_size=self.chunk_size, backend=self.backend,
            )
        else:
            y, ssm_state = gla_step(q, k, v, log_decay, state["ssm"], 1.0)
        return y + self.D.unsqueeze(-1) * x, z, {"conv": conv_state, "ssm": ssm_state}

    def _mix(self, h: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        o, z, new_state = self._pre_projection(h, state)
        y = apply_head_mask(o, self.head_mask).flatten(2)
        return self.out_proj(self.norm(y * F.silu(z))), new_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, P]: SSD's output with the D skip, per head, before the gated norm and out_proj."""
        return self._pre_projection(x, None)[0]

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [B, H, T, T], v = x [B, T, H, P]), materialised (probing only): SSD's masked attention
        A[h, t, s] = (C_t . B_s) exp(sum_{l=s+1..t} dt_{l,h} A_h) dt_{s,h} + D_h [t = s]."""
        batch, length, _ = x.shape
        x, B, C, dt, _, _ = self._inputs(x, None)
        acc = accumulation_dtype(x)
        dt = dt.to(acc)
        heads = (batch, length, self.n_heads, self.d_state)
        a = decayed_dot_product(C.unsqueeze(2).expand(heads), B.unsqueeze(2).expand(heads), dt * -torch.exp(self.A_log.to(acc)))
        dt = dt.transpose(1, 2)  # [B, H, T]
        a = a * dt.unsqueeze(-2) + torch.diag_embed(self.D.to(acc)[:, None].expand_as(dt))
        return a, x

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "conv": torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.n_heads, self.d_state, self.head_dim, device=device, dtype=dtype),
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.conv_dim * (self.d_conv - 1) + self.n_heads * self.d_state * self.head_dim
