"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), with Based's Taylor feature
map (Arora et al. 2024, "Simple linear attention language models balance the recall-throughput
tradeoff").

Per head, with feature map phi on projections q, k in R^{feature_dim} and values v in R^{Dv}:

    o_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),   S_t = sum_{s<=t} phi(k_s)^T v_s,   z_t = sum_{s<=t} phi(k_s)
    out = out_proj(o)

(without the division when ``normalize=False``). Feature maps:
    taylor    phi(x) = [1, x / d^(1/4), vec(x x^T) / sqrt(2d)],  so phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d)
              (Based; 1 + d + d^2 features)
    elu       phi(x) = elu(x) + 1 (Katharopoulos et al.)
    relu      phi(x) = relu(x)
    identity  phi(x) = x (unnormalised only: q . z has no sign)

Based's layer: feature_dim 16, 16 heads, value head dim d_model / n_heads, normalised. Runs on
`arch.ops.linear_attention.linear_attention` (the chunked GLA op with no decay, normaliser carried as
an extra value column). Decode state: (S, z) packed [B, H, F, Dv + 1], F the feature size.

Probe contract (`arch.probe`): G = the heads, v = W_v x per head [B, T, H, Dv], and the implicit attention
A[t, s] = phi(q_t) . phi(k_s) / (sum_{s'<=t} phi(q_t) . phi(k_s') + eps) for s <= t (the normaliser
phi(q_t) . z_t + eps folded into A's rows; without the division when ``normalize=False``). Based's
Taylor map gives phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d). pre_projection is o above, before
out_proj; the head mask scales o's heads before out_proj.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arch.ops import gla_step, linear_attention, taylor_feature_map
from arch.ops.implicit import decayed_dot_product, row_normalised
from arch.probe import apply_head_mask

FEATURE_MAPS = {
    "taylor": taylor_feature_map,
    "elu": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}


class LinearAttention(nn.Module):
    """Multi-head causal linear attention (module docstring).

    ``feature_dim`` is the per-head size of the q/k projections (before the feature map); ``head_dim``
    the per-head value size (d_model / n_heads when None).
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 16,
        feature_dim: int = 16,
        head_dim: int | None = None,
        feature_map: Literal["taylor", "elu", "relu", "identity"] = "taylor",
        normalize: bool = True,
        eps: float = 1e-6,
        chunk_size: int = 64,
        backend: str = "auto",
    ):
        super().__init__()
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}: choose one of {sorted(FEATURE_MAPS)}")
        if feature_map == "identity" and normalize:
            raise ValueError("feature_map='identity' cannot be normalised (q . z may be zero or negative): set normalize=false")
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads} (or set head_dim)")
        self.n_heads, self.feature_dim, self.head_dim = n_heads, feature_dim, head_dim or d_model // n_heads
        self.feature_map, self.normalize, self.eps = feature_map, normalize, eps
        self.feature_size = 1 + feature_dim + feature_dim**2 if feature_map == "taylor" else feature_dim
        self.chunk_size, self.backend = chunk_size, backend
        self.q_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)

    def features(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """phi(proj(x)) per head: [B, T, H, F]."""
        return FEATURE_MAPS[self.feature_map](proj(x).unflatten(-1, (self.n_heads, self.feature_dim)))

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """phi(q), phi(k) [B, T, H, F] and v [B, T, H, Dv]."""
        q, k = self.features(x, self.q_proj), self.features(x, self.k_proj)
        return q, k, self.v_proj(x).unflatten(-1, (self.n_heads, self.head_dim))

    def _heads(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """o [B, T, H, Dv] before out_proj (chunked, or the recurrence for one decode token), and the state."""
        q, k, v = self._project(x)
        if state is None or x.shape[1] > 1:
            return linear_attention(
                q, k, v, normalize=self.normalize, eps=self.eps, initial_state=state,
                chunk_size=self.chunk_size, backend=self.backend,
            )
        # the same packed (S, z) recurrence, one token
        out, state = gla_step(q, k, torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1), None, state, 1.0)
        return (out[..., :-1] / (out[..., -1:] + self.eps) if self.normalize else out[..., :-1]), state

    def _post(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out_proj(o, head mask applied): o [B, T, H, Dv] -> [B, T, d_model]."""
        return self.out_proj(apply_head_mask(o, self.head_mask).flatten(2))

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        o, state = self._heads(x, state)
        return self._post(o, x), state

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, Dv] of the chunked op, before out_proj (probe contract)."""
        return self._heads(x, None)[0]

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T] = phi(q_t).phi(k_s) / (normaliser_t) (s <= t) and v [B, T, H, Dv] (probe contract)."""
        q, k, v = self._project(x)
        a = decayed_dot_product(q, k)
        return (row_normalised(a, self.eps) if self.normalize else a), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.feature_size, self.head_dim + 1, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.feature_size * (self.head_dim + 1)
