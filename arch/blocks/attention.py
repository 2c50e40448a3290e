"""Causal multi-head softmax attention (Vaswani et al. 2017) with GQA/MQA (Ainslie et al. 2023;
Shazeer 2019), rotary positions (Su et al. 2021) and an optional sliding window (Longformer, Mistral)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from arch.ops import causal_attention, rotary_embedding


class Attention(nn.Module):
    """q = x W_q, k = x W_k, v = x W_v (n_kv_heads K/V heads shared by groups of query heads),
    RoPE on q and k, o = softmax(q k^T / sqrt(d_head) + causal/window mask) v, y = o W_out.

    window: each token attends to itself and the ``window - 1`` previous tokens (None = all).
    The decode state is the K/V cache, truncated to the window.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        position: Literal["rope", "none"] = "rope",
        rope_base: float = 10000.0,
        window: int | None = None,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        self.head_dim = head_dim or d_model // n_heads
        if position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.position, self.rope_base, self.window, self.backend = position, rope_base, window, backend
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * self.n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor | range):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k, v = self.kv_proj(x).view(b, t, 2, self.n_kv_heads, self.head_dim).unbind(2)
        if self.position == "rope":
            q = rotary_embedding(q, positions, self.rope_base)
            k = rotary_embedding(k, positions, self.rope_base)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, range(x.shape[1]))
        o = causal_attention(q, k, v, window=self.window, backend=self.backend)
        return self.out_proj(o.flatten(2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        empty = torch.zeros(batch_size, 0, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone(), "pos": 0}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        q, k, v = self._qkv(x, torch.tensor([state["pos"]], device=x.device))
        k = torch.cat([state["k"], k], dim=1)
        v = torch.cat([state["v"], v], dim=1)
        if self.window is not None:
            k, v = k[:, -self.window :], v[:, -self.window :]
        o = causal_attention(q, k, v, window=self.window, backend=self.backend)
        return self.out_proj(o.flatten(2)), {"k": k, "v": v, "pos": state["pos"] + 1}

    def state_size(self, seq_len: int) -> int:
        cached = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * self.n_kv_heads * self.head_dim * cached
