"""Mixture of attention heads (Zhang et al. 2022, "Mixture of Attention Heads: Selecting Attention Heads
Per Token"; the BAM variants, Zhang et al. 2024).

E attention experts, each with its own query and output projections (``expert_heads`` heads of
``head_dim``); keys and values are one projection shared by every expert (MoA; BAM's shared-K/V
variant) or one per expert (``kv: separate``, BAM's best variant). A router scores the experts per
token; the token's output is the gated sum over its top-k experts:

    y_t = sum_{e in topk(x_t)} g_e(x_t) W_o^e Attn(x_t W_q^e, K, V)

MoA's gates are the router's softmax scores, not renormalised (``normalize: false``), its router
starts at zero, and its auxiliary losses are the Switch load balance (weight 1e-2) and the z-loss
(1e-3) of `arch.blocks.routing`. ``top_k = n_experts`` is BAM's soft routing (every expert, weighted).

Computation: the query and output projections run for every expert as one matmul each (sparse
gathers would cost more than they save at these sizes); with shared K/V, attention runs only for
the k selected experts' heads (k * expert_heads query heads against the shared K/V heads, as GQA);
with separate K/V it runs for all E experts and the unselected get gate 0. The decode state is the
K/V cache: 2 n_kv_heads head_dim numbers per token, times E when K/V are separate.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from arch.blocks.routing import Router, expert_counts, routing_outputs
from arch.ops import causal_attention, rotary_embedding


class MoA(nn.Module):
    """Mixture of attention-head experts (module docstring)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_experts: int = 8,
        top_k: int = 2,
        expert_heads: int = 1,
        head_dim: int | None = None,
        n_kv_heads: int = 1,
        kv: Literal["shared", "separate"] = "shared",
        position: Literal["rope", "none"] = "rope",
        rope_base: float = 10000.0,
        score: Literal["softmax", "sigmoid"] = "softmax",
        normalize: bool = False,
        balance_weight: float = 0.01,
        z_weight: float = 0.001,
        backend: str = "auto",
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"MoA needs 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        if expert_heads % n_kv_heads:
            raise ValueError(f"expert_heads={expert_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        if kv not in ("shared", "separate"):
            raise ValueError(f"kv must be 'shared' or 'separate', got {kv!r}")
        self.head_dim = head_dim or d_model // (top_k * expert_heads)
        if position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        self.layer_idx, self.n_experts, self.top_k, self.heads = layer_idx, n_experts, top_k, expert_heads
        self.n_kv_heads, self.kv, self.position, self.rope_base = n_kv_heads, kv, position, rope_base
        self.score, self.normalize, self.backend = score, normalize, backend
        self.balance_weight, self.z_weight = balance_weight, z_weight
        width = expert_heads * self.head_dim
        kv_sets = n_experts if kv == "separate" else 1
        self.router = Router(d_model, n_experts)
        self.q_proj = nn.Linear(d_model, n_experts * width, bias=False)  # rows: [expert, head, head_dim]
        self.kv_proj = nn.Linear(d_model, kv_sets * 2 * n_kv_heads * self.head_dim, bias=False)  # [set, k|v, head, dim]
        self.out_proj = nn.Linear(n_experts * width, d_model, bias=False)  # columns: [expert, head, head_dim]
        self.aux_loss: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    def init_weights(self) -> None:
        nn.init.zeros_(self.router.proj.weight)  # MoA's router starts at zero (equal scores)

    def inactive_params(self) -> int:
        """Query/output rows of the experts a token does not use (and their K/V when separate)."""
        per_expert = 2 * self.heads * self.head_dim * self.q_proj.in_features
        if self.kv == "separate":
            per_expert += self.kv_proj.weight.numel() // self.n_experts
        return (self.n_experts - self.top_k) * per_expert

    def _route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        weights, experts, logits, probs = self.router.select(x.reshape(-1, d), self.top_k, self.score, self.normalize)
        counts = expert_counts(experts, self.n_experts)
        self.aux_loss, self.stats = routing_outputs(
            "moa", self.layer_idx, probs, logits, counts, self.balance_weight, self.z_weight, self.training
        )
        return weights.reshape(b, t, -1).to(x.dtype), experts.reshape(b, t, -1)

    def _project(self, x: torch.Tensor, positions: torch.Tensor):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_experts, self.heads, self.head_dim)
        k, v = self.kv_proj(x).view(b, t, -1, 2, self.n_kv_heads, self.head_dim).unbind(3)  # [B, T, sets, Hkv, Dh]
        k, v = k.flatten(2, 3), v.flatten(2, 3)
        if self.position == "rope":
            q = rotary_embedding(q.flatten(2, 3), positions, self.rope_base).view_as(q)
            k = rotary_embedding(k, positions, self.rope_base)
        return q, k, v

    def _mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of q [B, Tq, E, H, Dh] (the last Tq positions) against k, v [B, Tk, sets*Hkv, Dh], gated."""
        b, t = q.shape[:2]
        weights, experts = self._route(x)  # [B, T, k]
        gates = torch.zeros(b, t, self.n_experts, dtype=x.dtype, device=x.device).scatter(-1, experts, weights)
        if self.kv == "separate":  # every expert's heads, each expert with its own K/V heads
            o = causal_attention(q.flatten(2, 3), k, v, backend=self.backend).view(b, t, self.n_experts, self.heads, -1)
            o = o * gates[..., None, None]
        else:  # the selected experts' heads only, ordered [head, slot] so GQA groups follow the head
            index = experts[:, :, :, None, None].expand(-1, -1, -1, self.heads, self.head_dim)
            q_sel = q.gather(2, index).transpose(2, 3).reshape(b, t, self.heads * self.top_k, self.head_dim)
            o_sel = causal_attention(q_sel, k, v, backend=self.backend).view(b, t, self.heads, self.top_k, -1).transpose(2, 3)
            o = torch.zeros_like(q).scatter(2, index, o_sel * weights[..., None, None])
        return self.out_proj(o.flatten(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = range(x.shape[1])
        q, k, v = self._project(x, positions)
        return self._mix(x, q, k, v)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        sets = self.n_experts if self.kv == "separate" else 1
        empty = torch.zeros(batch_size, 0, sets * self.n_kv_heads, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty.clone(), "pos": 0}

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        positions = torch.tensor([state["pos"]], device=x.device)
        q, k, v = self._project(x, positions)
        k, v = torch.cat([state["k"], k], 1), torch.cat([state["v"], v], 1)
        return self._mix(x, q, k, v), {"k": k, "v": v, "pos": state["pos"] + 1}

    def state_size(self, seq_len: int) -> int:
        sets = self.n_experts if self.kv == "separate" else 1
        return 2 * sets * self.n_kv_heads * self.head_dim * seq_len
