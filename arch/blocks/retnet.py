"""Multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large
Language Models").

Per head h with a fixed decay gamma_h = 1 - 2^(-5-h) (h = 0..H-1: each head its own time scale):

    q, k, v = W_q x, W_k x, W_v x          (key dim = expand_k * d, value dim = expand_v * d; paper 1, 2)
    q, k    = Rot(q, n), Rot(k, n)         (rotary positions: the rotation part of xPos)
    S_n     = gamma_h S_{n-1} + k_n^T v_n,  o_n = q_n S_n / sqrt(Dk)
            (parallel form: o = (q k^T / sqrt(Dk) * D) v,  D_nm = gamma^(n-m) for n >= m, else 0)
    out     = out_proj(GroupNorm_per_head(o) * silu(W_g x))

The decay is a scalar per head, so the chunked op runs with log_decay = log gamma_h [B, T, H].
xPos's extra length-extrapolation scaling is left out (RetNet's public code also drops it): the
rotation alone keeps q.k relative. Decode state: S [B, H, Dk, Dv] and the position (not a tensor).

Probe contract (`arch.probe`): G = the heads, v = W_v x per head [B, T, H, Dv], and the implicit attention
A[n, m] = (q_n . k_m) gamma_h^(n-m) / sqrt(Dk) for m <= n (rotated q, k: the parallel form's D; no
normalisation comes before the group norm; `arch.ops.implicit.decayed_dot_product` with the scalar
log-decay log gamma_h). pre_projection is o above, before the group norm; the head mask scales each
head after the group norm (a per-head norm would undo any scaling of o).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arch.ops import gated_linear_attention, gla_step, rotary_embedding
from arch.ops.backend import accumulation_dtype
from arch.ops.implicit import decayed_dot_product
from arch.probe import apply_head_mask


class RetNet(nn.Module):
    """RetNet's multi-scale retention layer (module docstring)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        chunk_size: int = 16,
        backend: str = "auto",
    ):
        super().__init__()
        self.key_dim, self.value_dim = int(expand_k * d_model), int(expand_v * d_model)
        if self.key_dim % n_heads or self.value_dim % n_heads:
            raise ValueError(f"key dim {self.key_dim} and value dim {self.value_dim} must be multiples of n_heads={n_heads}")
        self.n_heads, self.head_k, self.head_v = n_heads, self.key_dim // n_heads, self.value_dim // n_heads
        if self.head_k % 2:
            raise ValueError(f"rotary positions need an even key head dim, got {self.head_k}")
        self.rope_base, self.chunk_size, self.backend = rope_base, chunk_size, backend
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.group_norm = nn.GroupNorm(n_heads, self.value_dim, eps=norm_eps)
        self.out_proj = nn.Linear(self.value_dim, d_model, bias=False)
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)

    def decay(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """gamma_h = 1 - 2^(-5-h), h = 0..H-1: [H]."""
        return 1 - 2.0 ** (-5 - torch.arange(self.n_heads, dtype=dtype, device=device))

    def _project(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated q, k [B, T, H, Dk] (positions from ``start``), v [B, T, H, Dv] and log gamma_h as [B, T, H]."""
        batch, length, _ = x.shape
        positions = range(start, start + length)
        q = rotary_embedding(self.q_proj(x).unflatten(-1, (self.n_heads, self.head_k)), positions, self.rope_base)
        k = rotary_embedding(self.k_proj(x).unflatten(-1, (self.n_heads, self.head_k)), positions, self.rope_base)
        v = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_v))
        work = accumulation_dtype(x)
        log_decay = torch.log(self.decay(work, x.device)).expand(batch, length, self.n_heads).contiguous()
        return q, k, v, log_decay

    def _heads(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """o [B, T, H, Dv] before the group norm (chunked, or the recurrence for one decode token), and the state."""
        start = 0 if state is None else state["pos"]
        q, k, v, log_decay = self._project(x, start)
        scale = self.head_k**-0.5
        if state is None or x.shape[1] > 1:
            S0 = None if state is None else state["S"]
            o, S = gated_linear_attention(
                q, k, v, log_decay, scale=scale, initial_state=S0, chunk_size=self.chunk_size, backend=self.backend
            )
        else:
            o, S = gla_step(q, k, v, log_decay, state["S"], scale)
        return o, {"S": S, "pos": start + x.shape[1]}

    def _post(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out_proj(head mask * GroupNorm(o) * silu(W_g x)): o [B, T, H, Dv] -> [B, T, d_model]."""
        batch, length, _ = x.shape
        # the mask after the per-head norm: a head's norm would undo any scaling of its o
        o = self.group_norm(o.reshape(batch * length, self.value_dim)).view(o.shape)
        o = apply_head_mask(o, self.head_mask).flatten(2)
        return self.out_proj(o * F.silu(self.g_proj(x)))

    def _mix(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        o, state = self._heads(x, state)
        return self._post(o, x), state

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, Dv] of the chunked op, before the group norm (probe contract)."""
        return self._heads(x, None)[0]

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T] = (q_n . k_m) gamma_h^(n-m) / sqrt(Dk) (m <= n) and v [B, T, H, Dv] (probe contract)."""
        q, k, v, log_decay = self._project(x, 0)
        return decayed_dot_product(q, k, log_decay, scale=self.head_k**-0.5), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        S = torch.zeros(batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype)
        return {"S": S, "pos": 0}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_k * self.head_v
