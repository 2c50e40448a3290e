"""RWKV-7 "Goose" time mixing (Peng et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State
Evolution"). With token shift dx_t = x_{t-1} - x_t and x_* = x_t + dx_t * mu_* (* in r, w, k, v, a, g):

    r = W_r x_r,   k = W_k x_k,   v = W_v x_v
    log-decay  = -exp(w),   w = -softplus(-(w0 + tanh(x_w A_w) B_w)) - 1/2       (decay in (e^-e^-1/2, 1))
    a_t  = sigmoid(a0 + x_a A_a B_a)                  (in-context learning rate)
    g_t  = sigmoid(x_g A_g) B_g                        (output gate)
    kk   = L2-normalise(k * k_k) per head,   k <- k * (1 + (a - 1) * k_a)
    S_t  = S_{t-1} (diag(exp(-exp(w_t))) - kk_t (kk_t * a_t)^T) + v_t k_t^T,   o_t = S_t r_t
    out  = out_proj((GroupNorm_per_head(o) + (sum(r * k * r_k) per head) v) * g)
    value residual (every RWKV-7 layer after the first):
         v <- v + (v_first - v) * sigmoid(v0 + x_v A_v B_v),   v_first = the first RWKV-7 layer's v

v_first travels through the model's per-forward ``shared`` dict (`arch.lm.Layer`); the first RWKV-7
layer to run puts its v there. A block used on its own (no ``shared``) has no value residual. The
residual's parameters exist for layer_idx > 0; should such a layer still be the first RWKV-7 layer
of a hybrid, the formula runs with v_first = v (an identity whose parameters get zero gradients).
The channel mix is RWKV-6's
without the receptance gate (`RWKV6ChannelMix(receptance=False)`, expansion 4); presets alternate
``[rwkv7, rwkv7_channel]`` as for RWKV-6. Initialisation follows the official recipe, interpolated
by depth as in `arch.blocks.rwkv6` (`arch.blocks.init.depth_ratios`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import channel_ramp, depth_ratios
from arch.blocks.rwkv6 import token_shift
from arch.ops import rwkv7


class RWKV7TimeMix(nn.Module):
    """RWKV-7 time mixing (module docstring). Decode state: the last token [B, d_model] and the state
    S [B, H, head_dim, head_dim]."""

    MIXED = ("r", "w", "k", "v", "a", "g")
    uses_shared = True  # reads and writes the value residual's v_first (arch.lm.Layer)

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        head_dim: int = 64,
        decay_rank: int = 64,
        a_rank: int = 64,
        gate_rank: int = 128,
        value_rank: int = 32,
        value_residual: bool = True,
        gn_eps: float = 64e-5,
        n_layers: int | None = None,
    ):
        super().__init__()
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
        self.n_heads, self.head_dim = d_model // head_dim, head_dim
        self.depth = depth_ratios(layer_idx, n_layers)
        self.mu = nn.Parameter(torch.empty(len(self.MIXED), d_model))
        self.r_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.decay_down = nn.Linear(d_model, decay_rank, bias=False)
        self.decay_up = nn.Linear(decay_rank, d_model)  # bias: w0
        self.a_down = nn.Linear(d_model, a_rank, bias=False)
        self.a_up = nn.Linear(a_rank, d_model)  # bias: a0
        self.g_down = nn.Linear(d_model, gate_rank, bias=False)
        self.g_up = nn.Linear(gate_rank, d_model, bias=False)
        self.value_residual = value_residual and layer_idx > 0
        self.v_down = nn.Linear(d_model, value_rank, bias=False) if self.value_residual else None
        self.v_up = nn.Linear(value_rank, d_model) if self.value_residual else None  # bias: v0
        self.k_k = nn.Parameter(torch.empty(d_model))
        self.k_a = nn.Parameter(torch.empty(d_model))
        self.r_k = nn.Parameter(torch.empty(self.n_heads, head_dim))
        self.group_norm = nn.GroupNorm(self.n_heads, d_model, eps=gn_eps)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        d = self.mu.shape[-1]
        ramp, (ratio_0_to_1, ratio_1_to_almost0) = channel_ramp(d), self.depth
        self.mu.copy_(torch.stack([1 - ramp ** (p * ratio_1_to_almost0) for p in (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)]))
        low_rank = [(self.decay_down, self.decay_up), (self.a_down, self.a_up), (self.g_down, self.g_up)]
        for down, up in low_rank + ([(self.v_down, self.v_up)] if self.value_residual else []):
            nn.init.zeros_(down.weight)
            nn.init.uniform_(up.weight, -0.01, 0.01)
        if self.value_residual:
            nn.init.ones_(self.v_up.bias)  # v0 = 1: sigmoid(1) = 0.73 of v_first at initialisation
        n = torch.arange(d, dtype=torch.float32) / max(d - 1, 1)
        self.decay_up.bias.copy_(-7 + 5 * n ** (0.85 + ratio_0_to_1**0.5) + 0.5)
        nn.init.zeros_(self.a_up.bias)
        self.k_k.fill_(0.85)
        self.k_a.fill_(1.0)
        self.r_k.fill_(-0.04)

    def log_decay(self, x_w: torch.Tensor) -> torch.Tensor:
        """-exp(w), w = -softplus(-(w0 + tanh(x_w A_w) B_w)) - 1/2: in [-e^-1/2, 0), [B, T, d_model]."""
        return -torch.exp(-F.softplus(-self.decay_up(torch.tanh(self.decay_down(x_w)))) - 0.5)

    def _mix(self, x: torch.Tensor, state: dict | None, shared: dict | None) -> tuple[torch.Tensor, dict]:
        batch, length, d = x.shape
        dx = token_shift(x, None if state is None else state["last"]) - x
        xr, xw, xk, xv, xa, xg = (x.unsqueeze(2) + dx.unsqueeze(2) * self.mu).unbind(2)
        heads = (self.n_heads, self.head_dim)
        a = torch.sigmoid(self.a_up(self.a_down(xa)))
        g = self.g_up(torch.sigmoid(self.g_down(xg)))
        k = self.k_proj(xk)
        kk = F.normalize((k * self.k_k).unflatten(-1, heads), dim=-1)
        k = (k * (1 + (a - 1) * self.k_a)).unflatten(-1, heads)
        v = self.v_proj(xv)
        if shared is not None:
            v_first = shared.setdefault("rwkv7_v_first", v)
            if self.value_residual:
                v = v + (v_first - v) * torch.sigmoid(self.v_up(self.v_down(xv)))
        r, v, a = self.r_proj(xr).unflatten(-1, heads), v.unflatten(-1, heads), a.unflatten(-1, heads)
        o, S = rwkv7(r, self.log_decay(xw).unflatten(-1, heads), k, v, -kk, kk * a, initial_state=None if state is None else state["S"])
        o = self.group_norm(o.reshape(batch * length, d)).view(batch, length, *heads)
        o = o + (r * k * self.r_k).sum(-1, keepdim=True) * v
        return self.out_proj(o.flatten(2) * g), {"last": x[:, -1], "S": S}

    def forward(self, x: torch.Tensor, shared: dict | None = None) -> torch.Tensor:
        return self._mix(x, None, shared)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "last": torch.zeros(batch_size, self.n_heads * self.head_dim, device=device, dtype=dtype),
            "S": torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype),
        }

    def step(self, x: torch.Tensor, state: dict, shared: dict | None = None) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state, shared)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_dim * (1 + self.head_dim)
