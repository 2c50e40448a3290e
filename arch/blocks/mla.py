"""Multi-head latent attention (DeepSeek-AI 2024, "DeepSeek-V2"): keys and values are decompressed from
one low-rank latent per token, and positions ride on a separate, decoupled RoPE key shared by all heads.

    c_t        = RMSNorm(W_DKV x_t)                         latent, kv_rank numbers
    k_t^R      = RoPE(W_KR x_t)                             one rope_dim key shared by every head
    [k^C_h; v_h] = W_UKV c_t                                per head: nope_dim key, v_dim value
    q_h        = [q^C_h; RoPE(q^R_h)] = W_UQ RMSNorm(W_DQ x_t)  (or W_Q x_t when q_rank = 0)
    o_h        = softmax_s((q^C_h . k^C_{h,s} + q^R_h . k^R_s) / sqrt(nope_dim + rope_dim)) v_{h,s}
    y          = W_O [o_1; ...; o_H]

The decode state caches c_t and k_t^R, (kv_rank + rope_dim) numbers per token, not K and V; each step
re-expands the cached latents through W_UKV (DeepSeek's "absorbed" form folds W_UK into the query
instead; same result, fewer FLOPs at long contexts). Sizes default to DeepSeek-V2(-Lite)'s ratios:
kv_rank = 4 head_dim, rope_dim = head_dim / 2, and a plain W_Q (q_rank 0).

The probe contract (`arch.probe`): G = the heads; v [B, T, H, v_dim] each head's decompressed values;
A [B, H, T, T] the causal softmax probabilities; pre_projection is [o_1; ...; o_H] as [B, T, H, v_dim]
before W_O; the head mask scales o's heads in forward and step. `queries_keys` gives q and k
[B, T, H, nope_dim + rope_dim] (the shared RoPE key repeated per head).
"""

from __future__ import annotations

import torch
from torch import nn

from arch.ops import causal_attention, rotary_embedding
from arch.ops.attention import softmax_weights
from arch.probe import apply_head_mask


class MLA(nn.Module):
    """Multi-head latent attention (module docstring)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        head_dim: int | None = None,
        kv_rank: int | None = None,
        q_rank: int = 0,
        rope_dim: int | None = None,
        v_dim: int | None = None,
        latent_norm: bool = True,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-6,
        backend: str = "auto",
    ):
        super().__init__()
        self.n_heads = n_heads
        self.nope_dim = head_dim or d_model // n_heads
        self.rope_dim = self.nope_dim // 2 if rope_dim is None else rope_dim
        self.v_dim = v_dim or self.nope_dim
        self.kv_rank = kv_rank or 4 * self.nope_dim
        if self.rope_dim % 2:
            raise ValueError(f"the decoupled RoPE key needs an even rope_dim, got {self.rope_dim}")
        if min(n_heads, self.nope_dim, self.kv_rank, self.v_dim) < 1 or q_rank < 0 or self.rope_dim < 0:
            raise ValueError("MLA sizes (n_heads, head_dim, kv_rank, v_dim) must be positive and q_rank, rope_dim >= 0")
        self.rope_base, self.backend = rope_base, backend
        qk = self.nope_dim + self.rope_dim
        if q_rank:
            self.q_down = nn.Linear(d_model, q_rank, bias=False)
            self.q_norm = nn.RMSNorm(q_rank, eps=norm_eps)
            self.q_proj = nn.Linear(q_rank, n_heads * qk, bias=False)
        else:
            self.q_down = self.q_norm = None
            self.q_proj = nn.Linear(d_model, n_heads * qk, bias=False)
        self.kv_down = nn.Linear(d_model, self.kv_rank + self.rope_dim, bias=False)  # [latent | rope key]
        self.kv_norm = nn.RMSNorm(self.kv_rank, eps=norm_eps) if latent_norm else nn.Identity()
        self.kv_up = nn.Linear(self.kv_rank, n_heads * (self.nope_dim + self.v_dim), bias=False)
        self.out_proj = nn.Linear(n_heads * self.v_dim, d_model, bias=False)
        self.head_mask: torch.Tensor | None = None  # [n_heads] (arch.probe)

    def _queries(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = x if self.q_down is None else self.q_norm(self.q_down(x))
        q = self.q_proj(h).view(b, t, self.n_heads, -1)
        if not self.rope_dim:
            return q
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], -1)
        return torch.cat([q_nope, rotary_embedding(q_rope, positions, self.rope_base)], -1)

    def _latents(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache holds per token: the normed latent [B, T, kv_rank] and the RoPE'd key [B, T, rope_dim]."""
        latent, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], -1)
        if self.rope_dim:
            k_rope = rotary_embedding(k_rope.unsqueeze(2), positions, self.rope_base).squeeze(2)
        return self.kv_norm(latent), k_rope

    def _keys_values(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k [B, T, H, nope_dim + rope_dim] and v [B, T, H, v_dim] decompressed from the latents."""
        b, t = latent.shape[:2]
        k_nope, v = self.kv_up(latent).view(b, t, self.n_heads, -1).split([self.nope_dim, self.v_dim], -1)
        return torch.cat([k_nope, k_rope.unsqueeze(2).expand(-1, -1, self.n_heads, -1)], -1), v

    def _attend(self, q: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
        """o [B, Tq, H, v_dim] (the queries are the last Tq positions of the latents)."""
        k, v = self._keys_values(latent, k_rope)
        scale = (self.nope_dim + self.rope_dim) ** -0.5
        # flash-attn wants one head size: zero-pad the narrower of q.k and v (zeros change no dot
        # product and no weighted value; the scale stays the q.k width's), drop the padding after
        width = max(k.shape[-1], self.v_dim)
        q, k, v = (nn.functional.pad(x, (0, width - x.shape[-1])) for x in (q, k, v))
        return causal_attention(q, k, v, scale=scale, backend=self.backend)[..., : self.v_dim]

    def _post(self, o: torch.Tensor) -> torch.Tensor:
        return self.out_proj(apply_head_mask(o, self.head_mask).flatten(2))

    def queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k [B, T, H, nope_dim + rope_dim] that enter the scores (before the scale)."""
        positions = range(x.shape[1])
        return self._queries(x, positions), self._keys_values(*self._latents(x, positions))[0]

    def pre_projection(self, x: torch.Tensor) -> torch.Tensor:
        """o [B, T, H, v_dim] before the output projection."""
        positions = range(x.shape[1])
        return self._attend(self._queries(x, positions), *self._latents(x, positions))

    def attention_matrix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [B, H, T, T] (causal softmax probabilities) and v [B, T, H, v_dim]."""
        positions = range(x.shape[1])
        k, v = self._keys_values(*self._latents(x, positions))
        return softmax_weights(self._queries(x, positions), k, scale=(self.nope_dim + self.rope_dim) ** -0.5), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._post(self.pre_projection(x))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {
            "latent": torch.zeros(batch_size, 0, self.kv_rank, device=device, dtype=dtype),
            "k_rope": torch.zeros(batch_size, 0, self.rope_dim, device=device, dtype=dtype),
            "pos": 0,
        }

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        positions = torch.tensor([state["pos"]], device=x.device)
        latent, k_rope = self._latents(x, positions)
        latent, k_rope = torch.cat([state["latent"], latent], 1), torch.cat([state["k_rope"], k_rope], 1)
        y = self._post(self._attend(self._queries(x, positions), latent, k_rope))
        return y, {"latent": latent, "k_rope": k_rope, "pos": state["pos"] + 1}

    def state_size(self, seq_len: int) -> int:
        return (self.kv_rank + self.rope_dim) * seq_len
