"""Token routing shared by the mixtures (MoE feed-forwards, MoA and MoH attention heads): the routers,
top-k selection, and the auxiliary losses and load statistics, written once.

    linear router     logits = x W_g                                           (Switch, ST-MoE, Mixtral)
    attention router  q, k, v = x W_q, x W_k, x W_v in R^E; logits = softmax(q k^T) v   (Yuan 2.0-M32:
                      the E x E row-softmax without a 1/sqrt(d) scale)
                      Both compute in float32 at least, whatever the input dtype.
    scores            softmax(logits) or sigmoid(logits) (DeepSeek-V3)
    top-k             the k largest scores; renormalised to sum to 1 when ``normalize``
    balance loss      E * sum_e f_e P_e, f_e = share of the N k assignments sent to expert e, P_e = mean
                      score of expert e over the N tokens (Switch eq. 4-6 with top-k counting; minimum 1
                      when routing is uniform). f_e is counted over the *global* batch under DDP (an
                      all-reduce of the counts); P_e is local and its gradient averages over ranks with
                      the others', which is the gradient of the global loss.
    z-loss            mean over tokens of logsumexp(logits)^2 (ST-MoE eq. 5)
    load              tokens per expert / mean tokens per expert; its max is logged
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Router(nn.Module):
    """Scores [N, E] of N tokens [N, d] over E experts, and the top-k choice.

    kind: "linear" (one d x E matrix) or "attention" (Yuan 2.0's attention router, three d x E).
    score: "softmax" or "sigmoid". Logits are computed in float32 at least (float64 inputs stay float64).
    """

    def __init__(self, d_model: int, n_experts: int, kind: Literal["linear", "attention"] = "linear", bias: bool = False):
        super().__init__()
        if kind not in ("linear", "attention"):
            raise ValueError(f"router kind must be 'linear' or 'attention', got {kind!r}")
        self.kind, self.n_experts = kind, n_experts
        self.proj = nn.Linear(d_model, n_experts * (3 if kind == "attention" else 1), bias=bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        bias = None if self.proj.bias is None else self.proj.bias.to(dtype)
        out = F.linear(x.to(dtype), self.proj.weight.to(dtype), bias)
        if self.kind == "linear":
            return out
        q, k, v = out.chunk(3, dim=-1)  # each [N, E]
        attn = torch.softmax(q.unsqueeze(-1) * k.unsqueeze(-2), dim=-1)  # [N, E, E]: row i = softmax_j(q_i k_j)
        return (attn @ v.unsqueeze(-1)).squeeze(-1)

    def select(self, x: torch.Tensor, k: int, score: str = "softmax", normalize: bool = True):
        """(weights [N, k], experts [N, k], logits [N, E], scores [N, E]) of tokens x [N, d]: the
        router's logits, their scores and the top-k choice."""
        logits = self.logits(x)
        probs = scores(logits, score)
        weights, experts = top_k(probs, k, normalize)
        return weights, experts, logits, probs


def scores(logits: torch.Tensor, kind: Literal["softmax", "sigmoid"]) -> torch.Tensor:
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    if kind == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"score must be 'softmax' or 'sigmoid', got {kind!r}")


def top_k(probs: torch.Tensor, k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [N, k], expert indices [N, k]); ties go to the lower index (torch.topk's order on CPU
    and CUDA for equal values is not guaranteed, so ties are broken by a stable sort)."""
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :k]
    weights = probs.gather(-1, order)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-20)
    return weights, order


def expert_counts(indices: torch.Tensor, n_experts: int, global_batch: bool = True) -> torch.Tensor:
    """Assignments per expert [E] (float), summed over all processes when ``global_batch`` and a
    process group is running."""
    counts = torch.bincount(indices.reshape(-1), minlength=n_experts)
    return global_counts(counts) if global_batch else counts.float()


def global_counts(counts: torch.Tensor) -> torch.Tensor:
    """This process's per-expert counts [E] summed over all processes (float; as is without a group)."""
    counts = counts.float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(counts)
    return counts


def routing_outputs(
    name: str,
    layer_idx: int,
    probs: torch.Tensor,
    logits: torch.Tensor,
    counts: torch.Tensor,
    balance_weight: float,
    z_weight: float | None,
    training: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """What a mixture leaves after a forward: its weighted auxiliary losses (``{name}_balance`` and,
    unless ``z_weight`` is None, ``{name}_z``; none outside training) and its load statistics, from the
    global ``counts``."""
    aux = {}
    if training:
        aux[f"{name}_balance"] = balance_weight * balance_loss(probs, counts)
        if z_weight is not None:
            aux[f"{name}_z"] = z_weight * z_loss(logits)
    return aux, load_stats(counts, name, layer_idx)


def balance_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch load-balancing loss E * sum_e f_e P_e with f = counts / counts.sum() (no gradient) and
    P = probs.mean(0); 1 at uniform routing."""
    f = counts / counts.sum().clamp_min(1)
    return probs.shape[-1] * (f.detach() * probs.reshape(-1, probs.shape[-1]).mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(logits.reshape(-1, logits.shape[-1]), dim=-1).square().mean()


def load_stats(counts: torch.Tensor, name: str, layer_idx: int) -> dict[str, torch.Tensor]:
    """Diagnostics for `LanguageModel.block_stats`: the max over mean expert load and each expert's
    share of the assignments, named ``{name}/load_max_over_mean/layer{i}`` and
    ``{name}/load/layer{i}/expert{e}``."""
    share = counts / counts.sum().clamp_min(1)
    stats = {f"{name}/load_max_over_mean/layer{layer_idx}": (share.max() * share.numel()).detach()}
    stats.update({f"{name}/load/layer{layer_idx}/expert{e}": s.detach() for e, s in enumerate(share)})
    return stats
