"""Gated Linear Attention (Yang et al. 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training").

Per head, with q, k in R^{Dk} and v in R^{Dv} (key dim = expand_k * d_model, value dim =
expand_v * d_model, split over heads):

    q, k, v = W_q x, W_k x, W_v x
    alpha_t = sigmoid(W_2 W_1 x_t + b)^(1/16)                  (low-rank forget gate, per key dim)
    g_t     = log alpha_t = logsigmoid(W_2 W_1 x_t + b) / 16    (gate_logit_normalizer = 16)
    S_t     = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(Dk)
    out     = out_proj(GroupNorm_per_head(o) * silu(W_r x))     (swish output gate)

The paper's defaults: expand_k 0.5, expand_v 1, 4 heads, low-rank 16. The parallel form is the
chunked `arch.ops.gla.gated_linear_attention`; `step` is the recurrence itself (`arch.ops.gla.gla_step`).
Decode state: S [B, H, Dk, Dv].

Probe contract (`arch.probe`): G = the heads, v = W_v x per head [B, T, H, Dv], and the implicit attention
A[t, s] = sum_d q_td k_sd exp(G_td - G_sd) / sqrt(Dk) for s <= t (G_t = sum_{r<=t} g_r, the cumulative
log-decay; `arch.ops.implicit.decayed_dot_product`). pre_projection is o above, before the group norm;
the head mask scales each head after the group norm (a per-head norm would undo any scaling of o).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.ops import gated_linear_attention, gla_step
from arch.ops.implicit import decayed_dot_product
from arch.probe import apply_head_mask


class GLA(nn.Module):
    """Gated linear attention layer (module docstring).

    ``gate_low_rank_dim`` is the rank of the forget-gate projection W_2 W_1; ``gate_logit_normalizer``
    divides logsigmoid (16 in the paper: decays stay close to 1 at initialisation).
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        chunk_size: int = 16,
        backend: str = "auto",
    ):
        super().__init__()
        self.key_dim, self.value_dim = int(expand_k * d_model), int(expand_v * d_model)
        if self.key_dim % n_heads or self.value_dim % n_heads:
            raise ValueError(f"key dim {self.key_dim} and value dim {self.value_dim} must be multiples of n_heads={n_heads}")
        self.n_heads, self.head_k, self.head_v = n_heads, self.key_dim // n_heads, self.value_dim // n_heads
        self.gate_logit_normalizer, self.chunk_size, self.backend = gate_logit_normalizer, chunk_size, backend
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, self.key_dim, bias=True)
        )
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.group_norm = nn.GroupNorm(n_heads, self.value_dim, eps=norm_eps)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """g = logsigmoid(W_2 W_1 x + b) / gate_logit_normalizer, [B, T, H, Dk] (all <= 0)."""
        g = F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer
        return g.unflatten(-1, (self.n_heads, self.head_k))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k [B, T, H, Dk], v [B, T, H, Dv] and the log-decay g [B, T, H, Dk]."""
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_k))
        k = self.k_proj(x).unflatten(-1, (self.n_heads, self.head_k))
        v = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_v))
        return q, k, v, self.log_decay(x)

    def _heads(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """o [B, T, H, Dv] before the group norm (chunked, or the recurrence for one decode token), and the state."""
        q, k, v, g = self._project(x)
        scale = self.head_k**-0.5
        if state is None or x.shape[1] > 1:
            return gated_linear_attention(
                q, k, v, g, scale=scale, initial_state=state, chunk_size=self.chunk_size, backend=self.backend
            )
        return gla_step(q, k, v, g, state, scale)

    def _post(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out_proj(head mask * GroupNorm(o) * silu(W_r x)): o [B, T, H, Dv] -> [B, T, d_model]."""
        batch, length, _ = x.shape
        # the mask after the per-head norm: a head's norm would undo any scaling of its o
        o = self.group_norm(o.reshape(batch * length, self.value_dim)).view(o.shape)
        o = apply_head_mask(o, self.head_mask).flatten(2)
        return self.out_proj(o * F.silu(self.g_proj(x)))

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        o, state = self._heads(x, state)
        return self._post(o, x), state

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, Dv] of the chunked op, before the group norm (probe contract)."""
        return self._heads(x, None)[0]

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T] = sum_d q_td k_sd exp(G_td - G_sd) / sqrt(Dk) (s <= t) and v [B, T, H, Dv] (probe contract)."""
        q, k, v, g = self._project(x)
        return decayed_dot_product(q, k, g, scale=self.head_k**-0.5), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_k * self.head_v
