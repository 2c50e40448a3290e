"""Mixture-of-experts feed-forward (Shazeer et al. 2017; Switch, Fedus et al. 2021; ST-MoE, Zoph et al.
2022; DeepSeekMoE, Dai et al. 2024): a channel mixer whose SwiGLU experts each see the tokens routed
to them.

    y = sum_{e in topk(x)} w_e(x) SwiGLU_e(x)  +  SwiGLU_shared(x)

Routing, scores and the auxiliary losses are `arch.blocks.routing`'s. Computation is **dropless** by
default: the N k (token, expert) assignments are sorted by expert and each expert runs one matmul
over its contiguous slice (a grouped GEMM on CUDA where PyTorch has one), nothing is dropped. With a
``capacity_factor`` c each expert keeps at most ceil(c N k / E) assignments, first come first served
in token order (Switch); a dropped assignment contributes nothing, so a token whose every assignment
is dropped passes through the layer's residual unchanged.

Fine-grained experts (DeepSeekMoE): ``granularity`` m splits each expert into m of hidden/m and routes
to m top_k of m n_experts. ``n_shared`` experts are always on, built as one SwiGLU of n_shared times
the (fine-grained) expert hidden, as torchtitan does.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from arch.blocks.mlp import SwiGLU, _round
from arch.blocks.routing import Router, global_counts, routing_outputs


class Experts(nn.Module):
    """E stacked weight matrices [E, in, out]: ``x_e @ weight[e]`` for expert e's tokens. The language
    model initialises them as Linear weights (N(0, init_std), ``out_proj`` scaled by depth)."""

    def __init__(self, n_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_experts, in_features, out_features))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x [sum(counts), in], rows grouped by expert (counts[e] rows for expert e) -> [sum(counts), out]."""
        if grouped_mm_supported(x, self.weight):
            offsets = torch.tensor(counts, device=x.device).cumsum(0).to(torch.int32)
            return torch._grouped_mm(x, self.weight, offs=offsets)
        if not x.shape[0]:
            return x @ self.weight[0]
        return torch.cat([chunk @ w for chunk, w in zip(x.split(counts), self.weight)])


def grouped_mm_supported(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether PyTorch's grouped GEMM (``torch._grouped_mm``) takes these operands: float32 or 16-bit
    (bf16 only, on a Hopper or newer GPU), rows of a multiple of 16 bytes, at least one row. Else
    `Experts` runs one matmul per expert."""
    if not hasattr(torch, "_grouped_mm") or x.dtype != w.dtype or not x.shape[0]:
        return False
    if any(n * x.element_size() % 16 for n in w.shape[1:]):
        return False
    if x.is_cuda:
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return x.dtype in (torch.float32, torch.bfloat16, torch.float16)


class MoE(nn.Module):
    """Top-k token-choice MoE of SwiGLU experts (see the module docstring).

    n_experts, top_k: routed experts and experts per token (before ``granularity``).
    hidden: each expert's SwiGLU hidden size (default 8/3 d_model rounded to ``multiple_of``, as SwiGLU),
    divided by ``granularity``. router: "linear" or "attention" (Yuan 2.0). score: "softmax" or "sigmoid".
    normalize: renormalise the top-k weights to sum to 1 (default: yes).
    balance_weight, z_weight: weights of the load-balancing loss and the router z-loss (ST-MoE's 1e-2, 1e-3).
    capacity_factor: None = dropless.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_experts: int = 8,
        top_k: int = 2,
        hidden: int | None = None,
        multiple_of: int = 32,
        granularity: int = 1,
        n_shared: int = 0,
        router: Literal["linear", "attention"] = "linear",
        score: Literal["softmax", "sigmoid"] = "softmax",
        normalize: bool = True,
        balance_weight: float = 0.01,
        z_weight: float = 0.001,
        capacity_factor: float | None = None,
    ):
        super().__init__()
        if granularity < 1 or n_experts < 1 or not 1 <= top_k <= n_experts:
            raise ValueError(f"MoE needs granularity >= 1 and 1 <= top_k <= n_experts, got {n_experts=}, {top_k=}, {granularity=}")
        if score not in ("softmax", "sigmoid"):
            raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None (dropless), got {capacity_factor}")
        if n_shared < 0 or balance_weight < 0 or z_weight < 0:
            raise ValueError("n_shared, balance_weight and z_weight must be >= 0")
        base = hidden or _round(8 * d_model / 3, multiple_of)
        if base % granularity:
            raise ValueError(f"the expert hidden size {base} is not divisible by granularity={granularity}")
        self.layer_idx = layer_idx
        self.n_experts, self.top_k = n_experts * granularity, top_k * granularity
        self.hidden = base // granularity
        self.score, self.normalize = score, normalize
        self.balance_weight, self.z_weight, self.capacity_factor = balance_weight, z_weight, capacity_factor
        self.router = Router(d_model, self.n_experts, kind=router)
        self.in_proj = Experts(self.n_experts, d_model, 2 * self.hidden)  # [gate | up], as SwiGLU.in_proj
        self.out_proj = Experts(self.n_experts, self.hidden, d_model)
        self.shared = SwiGLU(d_model, layer_idx, hidden=n_shared * self.hidden) if n_shared else None
        self.aux_loss: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights [N, k], experts [N, k], logits [N, E], scores [N, E]) of tokens x [N, d]."""
        return self.router.select(x, self.top_k, self.score, self.normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, experts, logits, probs = self.route(flat)
        n, k = experts.shape
        assignment = experts.reshape(-1)  # assignment a = token a // k, its (a % k)-th choice
        order = torch.argsort(assignment, stable=True)  # grouped by expert, token order within
        counts = torch.bincount(assignment, minlength=self.n_experts)
        self.aux_loss, self.stats = routing_outputs(
            "moe", self.layer_idx, probs, logits, global_counts(counts), self.balance_weight, self.z_weight, self.training
        )
        if self.capacity_factor is not None:
            capacity = math.ceil(self.capacity_factor * n * k / self.n_experts)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(order.numel(), device=x.device) - starts.repeat_interleave(counts)
            order = order[rank < capacity]
            counts = counts.clamp(max=capacity)
        if self.capacity_factor is None:  # a permutation: rows move by index_copy, whose backward is a gather
            position = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
            rows = flat.unsqueeze(1).expand(n, k, flat.shape[-1]).reshape(n * k, -1)
            rows = torch.empty_like(rows).index_copy(0, position, rows)  # sorted by expert
            out = self._experts(rows, counts)
            out = torch.empty_like(out).index_copy(0, order, out).view(n, k, -1)  # back to (token, choice)
            y = (out * weights.unsqueeze(-1).to(out.dtype)).sum(1)
        else:
            tokens = order // k
            out = self._experts(flat[tokens], counts)
            out = out * weights.reshape(-1)[order].unsqueeze(-1).to(out.dtype)
            y = torch.zeros_like(flat).index_add_(0, tokens, out)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.reshape(shape)

    def _experts(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """SwiGLU of each expert over its rows (rows grouped by expert, counts[e] of them)."""
        sizes = counts.tolist()
        gate, up = self.in_proj(rows, sizes).chunk(2, dim=-1)
        return self.out_proj(F.silu(gate) * up, sizes)

    def inactive_params(self) -> int:
        """Parameters a token does not use: the n_experts - top_k experts it is not routed to
        (`arch.flops.active_params`)."""
        return (self.n_experts - self.top_k) * (self.in_proj.weight[0].numel() + self.out_proj.weight[0].numel())
