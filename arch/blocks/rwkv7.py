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

Probe contract (`arch.probe`): G = the heads, v = the values per head [B, T, H, Dv] (after the value
residual), and the implicit attention of the state update A[t, s] = k_s^T M_{s+1} ... M_t r_t for s <= t,
M_t = diag(exp(-exp(w_t))) - kk_t (kk_t * a_t)^T (`arch.ops.implicit.diagonal_plus_low_rank`). pre_projection
is o = S_t r_t, before the group norm. The current-token term (sum(r * k * r_k) per head) v is added
after the norm: it is not part of o. The head mask scales each head after both (the group norm would
undo any scaling of o), so masking a head removes all of it. The probe methods take ``shared`` as forward does (the value residual).

The channel mix is RWKV-6's
without the receptance gate and with the shift mix 1 - ddd^(r1^4) (`RWKV6ChannelMix(receptance=False,
depth_power=4)`, expansion 4); presets alternate ``[rwkv7, rwkv7_channel]`` with ``layer_span: 2`` as
for RWKV-6 (`arch.blocks.rwkv6`: l = layer_idx // 2, L = n_layers // 2).

Initialisation is the official x070 recipe (BlinkDL/RWKV-LM RWKV-v7/train_temp/src/model.py,
``RWKV_Tmix_x070`` then ``generate_init_weight``). Per RWKV layer l of L, with ddd_n = n / C,
lin_n = n / (C - 1) - 1/2, zig_n = z |z|, z = ((n mod N) - (N - 1)/2) / ((N - 1)/2) (N = head_dim),
r0 = l / (L - 1), r1 = 1 - l / L:

    mu_r, mu_w, mu_k, mu_v, mu_a, mu_g = 1 - ddd^(r1 * (0.2, 0.9, 0.7, 0.7, 0.9, 0.2))
    w0 = -6 + 6 (n / (C - 1))^(1 + r0^0.3) + 1/2 + 2.5 zig,   a0 = -0.19 + 0.3 zig + 0.4 lin
    v0 = 0.73 - 0.4 lin,   k_k = 0.71 - 0.1 lin,   k_a = 1.02,   r_k = -0.04,   GroupNorm weight ((1 + l) / L)^0.7
    LoRA (A, B): A = 0, B orthogonal with gain 0.1 (x sqrt(rank / C) when rank > C); ranks default to
        max(32, round(f sqrt(C) / 32) * 32), f = 2.5 (w, a), 1.7 (v), 5 (g)   (`arch.blocks.init.rwkv_lora_rank`)
    W_r, W_v orthogonal (gain 1), W_k orthogonal (gain 0.1), W_out 0

Weight decay, as the reference's optimiser groups (">= 2-D .weight" decays, the rest not): only W_r,
W_k, W_v and W_out decay; the mixes, LoRA factors, w0, a0, v0, k_k, k_a, r_k and the GroupNorm are
exempt. The reference also trains w0 at twice the learning rate: not done here (one learning rate).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.init import (
    channel_ramp,
    depth_ratios,
    no_weight_decay,
    orthogonal_or_zero_,
    rwkv_depth,
    rwkv_group_norm_scale,
    rwkv_lora_rank,
)
from arch.blocks.rwkv6 import token_shift
from arch.ops import rwkv7
from arch.ops.implicit import diagonal_plus_low_rank
from arch.probe import apply_head_mask


class RWKV7TimeMix(nn.Module):
    """RWKV-7 time mixing (module docstring). Decode state: the last token [B, d_model] and the state
    S [B, H, head_dim, head_dim]."""

    MIXED = ("r", "w", "k", "v", "a", "g")
    uses_shared = True  # reads and writes the value residual's v_first (arch.lm.Layer)
    PROJECTION_GAINS = {"r_proj": 1.0, "k_proj": 0.1, "v_proj": 1.0, "out_proj": 0.0}  # generate_init_weight

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        head_dim: int = 64,
        decay_rank: int | None = None,
        a_rank: int | None = None,
        gate_rank: int | None = None,
        value_rank: int | None = None,
        value_residual: bool = True,
        gn_eps: float = 64e-5,
        layer_span: int = 1,
        n_layers: int | None = None,
    ):
        super().__init__()
        if d_model % head_dim:
            raise ValueError(f"d_model={d_model} must be a multiple of head_dim={head_dim}")
        self.n_heads, self.head_dim = d_model // head_dim, head_dim
        layer, depth = rwkv_depth(layer_idx, n_layers, layer_span)
        self.depth, self.group_norm_scale = depth_ratios(layer, depth), rwkv_group_norm_scale(layer, depth)
        decay_rank = decay_rank or rwkv_lora_rank(d_model, 2.5)
        a_rank = a_rank or rwkv_lora_rank(d_model, 2.5)
        gate_rank = gate_rank or rwkv_lora_rank(d_model, 5.0)
        value_rank = value_rank or rwkv_lora_rank(d_model, 1.7)
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
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)
        decayed = {f"{name}.weight" for name in self.PROJECTION_GAINS}
        no_weight_decay(*(p for name, p in self.named_parameters() if name not in decayed))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for name, gain in self.PROJECTION_GAINS.items():
            orthogonal_or_zero_(getattr(self, name).weight, gain)
        d, n = self.mu.shape[-1], torch.arange(self.mu.shape[-1], dtype=torch.float32)
        ramp, (ratio_0_to_1, ratio_1_to_almost0) = channel_ramp(d), self.depth
        self.mu.copy_(torch.stack([1 - ramp ** (p * ratio_1_to_almost0) for p in (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)]))
        low_rank = [(self.decay_down, self.decay_up), (self.a_down, self.a_up), (self.g_down, self.g_up)]
        for down, up in low_rank + ([(self.v_down, self.v_up)] if self.value_residual else []):
            nn.init.zeros_(down.weight)
            rank = up.in_features  # the reference's second factor is [rank, C]: gain x sqrt(rank / C) when taller than wide
            orthogonal_or_zero_(up.weight, 0.1 * (math.sqrt(rank / d) if rank > d else 1.0))
        half = (self.head_dim - 1) / 2
        z = (n % self.head_dim - half) / half
        zigzag, linear = z * z.abs(), n / max(d - 1, 1) - 0.5
        self.decay_up.bias.copy_(-6 + 6 * (n / max(d - 1, 1)) ** (1 + ratio_0_to_1**0.3) + 0.5 + 2.5 * zigzag)
        self.a_up.bias.copy_(-0.19 + 0.3 * zigzag + 0.4 * linear)
        if self.value_residual:
            self.v_up.bias.copy_(0.73 - 0.4 * linear)
        self.k_k.copy_(0.71 - 0.1 * linear)
        self.k_a.fill_(1.02)
        self.r_k.fill_(-0.04)
        self.group_norm.weight.fill_(self.group_norm_scale)
        nn.init.zeros_(self.group_norm.bias)

    def log_decay(self, x_w: torch.Tensor) -> torch.Tensor:
        """-exp(w), w = -softplus(-(w0 + tanh(x_w A_w) B_w)) - 1/2: in [-e^-1/2, 0), [B, T, d_model]."""
        return -torch.exp(-F.softplus(-self.decay_up(torch.tanh(self.decay_down(x_w)))) - 0.5)

    def _project(self, x: torch.Tensor, last: torch.Tensor | None, shared: dict | None) -> tuple[torch.Tensor, ...]:
        """r, log-decay, k, v, the state update's a = -kk and b = kk * a [B, T, H, head_dim], and the gate g [B, T, d_model]
        (token shift from ``last``, the token before x: zeros when None)."""
        dx = token_shift(x, last) - x
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
        return r, self.log_decay(xw).unflatten(-1, heads), k, v, -kk, kk * a, g

    def _post(self, o: torch.Tensor, r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """out_proj(head mask * (GroupNorm(o) + (sum(r * k * r_k)) v) * g): o [B, T, H, Dv] -> [B, T, d_model]."""
        batch, length, d = g.shape
        o = self.group_norm(o.reshape(batch * length, d)).view(batch, length, *v.shape[2:])
        o = o + (r * k * self.r_k).sum(-1, keepdim=True) * v
        # the mask after the per-head norm (which would undo any scaling of o) and the current-token term
        return self.out_proj(apply_head_mask(o, self.head_mask).flatten(2) * g)

    def _mix(self, x: torch.Tensor, state: dict | None, shared: dict | None) -> tuple[torch.Tensor, dict]:
        r, log_decay, k, v, a, b, g = self._project(x, None if state is None else state["last"], shared)
        o, S = rwkv7(r, log_decay, k, v, a, b, initial_state=None if state is None else state["S"])
        return self._post(o, r, k, v, g), {"last": x[:, -1], "S": S}

    def pre_projection(self, x: torch.Tensor, shared: dict | None = None) -> torch.Tensor:
        """o [B, T, H, Dv] of the chunked op, before the group norm (probe contract)."""
        r, log_decay, k, v, a, b, _ = self._project(x, None, shared)
        return rwkv7(r, log_decay, k, v, a, b)[0]

    def attention_matrix(self, x: torch.Tensor, shared: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T] = k_s^T M_{s+1} ... M_t r_t (s <= t) and v [B, T, H, Dv] (probe contract)."""
        r, log_decay, k, v, a, b, _ = self._project(x, None, shared)
        return diagonal_plus_low_rank(r, log_decay, k, a, b), v

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
