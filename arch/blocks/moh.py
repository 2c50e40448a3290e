"""Mixture-of-head attention (Jin et al. 2024, "MoH: Multi-Head Attention as Mixture-of-Head Attention"):
multi-head attention whose per-head outputs are weighted per token before the output projection.

Of the H heads, the first ``n_shared`` are always on, the other H - n_shared are routed, top_k active
per token. With x a token and W_r, W_s, W_h the three router matrices (SkyworkAI/MoH's code):

    routed gates  p = softmax(W_r x) over the routed heads, kept on the top_k, renormalised over them, x top_k
    shared gates  s = softmax(W_s x) over the shared heads, x n_shared
    two stages    [a_s, a_r] = 2 softmax(W_h x)
    y = W_o concat_h(g_h o_h),  g = [a_s s, a_r p]

So uniform router outputs give every active head the weight 1, and with every head on (top_k = H -
n_shared) the layer is multi-head attention. The load-balancing loss is the Switch form over the
routed heads, E sum_i mean_t(p_i) f_i (weight 1e-2, as the reference); no z-loss. All heads are
computed and the unselected ones weighted 0 (the reference does the same); the K/V cache is
attention's.

The probe contract is `Attention`'s (G = the heads): pre_projection and attention_matrix are the
heads' outputs before the routing gates, which, like the output projection, come after the head mask.
"""

from __future__ import annotations

from typing import Literal

import torch

from arch.blocks.attention import Attention
from arch.blocks.routing import Router, expert_counts, routing_outputs


class MoH(Attention):
    """Attention with per-token head gates (module docstring); the other arguments are `Attention`'s."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 8,
        n_shared: int = 2,
        top_k: int = 3,
        balance_weight: float = 0.01,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        position: Literal["rope", "none"] = "rope",
        rope_base: float = 10000.0,
        window: int | None = None,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__(d_model, layer_idx, n_heads, n_kv_heads, head_dim, position, rope_base, window, bias, backend)
        routed = n_heads - n_shared
        if not 0 <= n_shared < n_heads or not 1 <= top_k <= routed:
            raise ValueError(
                f"MoH needs 0 <= n_shared < n_heads and 1 <= top_k <= n_heads - n_shared, got {n_heads=}, {n_shared=}, {top_k=}"
            )
        self.layer_idx, self.n_shared, self.top_k, self.balance_weight = layer_idx, n_shared, top_k, balance_weight
        self.router = Router(d_model, routed)
        self.shared_router = Router(d_model, n_shared) if n_shared else None
        self.mix_router = Router(d_model, 2) if n_shared else None
        self.aux_loss: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head weights [B, T, H] of tokens x [B, T, d]."""
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        weights, heads, logits, probs = self.router.select(flat, self.top_k)
        routed = torch.zeros_like(probs).scatter(-1, heads, weights * self.top_k)
        counts = expert_counts(heads, probs.shape[-1])
        self.aux_loss, self.stats = routing_outputs("moh", self.layer_idx, probs, logits, counts, self.balance_weight, None, self.training)
        if self.n_shared:
            shared = torch.softmax(self.shared_router.logits(flat), -1) * self.n_shared
            stage = 2 * torch.softmax(self.mix_router.logits(flat), -1)
            routed = torch.cat([stage[:, :1] * shared, stage[:, 1:] * routed], -1)
        return routed.reshape(b, t, -1).to(x.dtype)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The gates scale each head's output [B, T, H, Dh] (already head-masked) before the output
        projection; the rest (projections, RoPE, K/V cache, forward and step, the probe contract) is
        `Attention`'s."""
        return super()._output(x, o * self.gates(x)[..., None])
