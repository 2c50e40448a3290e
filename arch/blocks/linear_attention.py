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
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arch.ops import gla_step, linear_attention, taylor_feature_map

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

    def features(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """phi(proj(x)) per head: [B, T, H, F]."""
        return FEATURE_MAPS[self.feature_map](proj(x).unflatten(-1, (self.n_heads, self.feature_dim)))

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.features(x, self.q_proj), self.features(x, self.k_proj)
        v = self.v_proj(x).unflatten(-1, (self.n_heads, self.head_dim))
        if state is None or x.shape[1] > 1:
            o, state = linear_attention(
                q, k, v, normalize=self.normalize, eps=self.eps, initial_state=state,
                chunk_size=self.chunk_size, backend=self.backend,
            )
        else:  # the same packed (S, z) recurrence, one token
            out, state = gla_step(q, k, torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1), None, state, 1.0)
            o = out[..., :-1] / (out[..., -1:] + self.eps) if self.normalize else out[..., :-1]
        return self.out_proj(o.flatten(2)), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.n_heads, self.feature_size, self.head_dim + 1, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.feature_size * (self.head_dim + 1)
