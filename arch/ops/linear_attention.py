"""Causal (normalised) linear attention on feature-mapped queries and keys, and Based's Taylor map.

    S_t = sum_{s<=t} k_s^T v_s,   z_t = sum_{s<=t} k_s,   o_t = q_t S_t / (q_t . z_t + eps)

Papers: Katharopoulos et al. 2020, "Transformers are RNNs"; Arora et al. 2024, "Simple linear attention
language models balance the recall-throughput tradeoff" (Based: 2nd-order Taylor feature map).
The scan is `gated_linear_attention` without decay, run on v with a column of ones appended so that
numerator and normaliser come out of one pass.
"""

from __future__ import annotations

import torch

from arch.ops.backend import accumulation_dtype
from arch.ops.gla import gated_linear_attention


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Based's 2nd-order Taylor feature map, phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))].

    Chosen so that phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d), the Taylor expansion of
    exp(q.k / sqrt(d)) to second order. Shapes: [..., d] -> [..., 1 + d + d * d].
    Paper: Arora et al. 2024 (Based), Sec. 3.
    """
    d = x.shape[-1]
    ones = x.new_ones(*x.shape[:-1], 1)
    x = x / d**0.25
    x_half = x / 2**0.25  # the outer product of x / (sqrt(2) sqrt(d))^(1/2) with itself: no pass over the wide result
    return torch.cat([ones, x, (x_half.unsqueeze(-1) * x_half.unsqueeze(-2)).flatten(-2)], dim=-1)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal linear attention: o_t = q_t S_t / (q_t . z_t + eps), S_t = sum_{s<=t} k_s^T v_s,
    z_t = sum_{s<=t} k_s (without the division when ``normalize=False``).

    Args:
        q, k: already feature-mapped, [B, T, H, Dk] (e.g. `taylor_feature_map` of the projections;
            the map must keep q . z positive for the normaliser to make sense).
        v: [B, T, H, Dv].
        initial_state: (S, z) packed as [B, H, Dk, Dv + 1]: [..., :Dv] is S and [..., Dv] is z.
        chunk_size, backend: as in `gated_linear_attention`.

    Returns:
        o [B, T, H, Dv] in q's dtype, and the final state packed as (S_T, z_T) in [B, H, Dk, Dv + 1]
        (float32, or float64 for float64 inputs). z is carried even when ``normalize=False`` so that one
        state layout serves both.

    Papers: Katharopoulos et al. 2020; Arora et al. 2024 (Based).
    """
    v_and_one = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
    out, final_state = gated_linear_attention(
        q, k, v_and_one, None, scale=1.0, initial_state=initial_state, chunk_size=chunk_size, backend=backend
    )
    numerator, normaliser = out[..., :-1], out[..., -1:]
    return (numerator / (normaliser + eps) if normalize else numerator), final_state


def linear_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    normalize: bool = True,
    eps: float = 1e-6,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference of `linear_attention` (same signature; chunk_size, backend ignored).

    S_t = S_{t-1} + k_t^T v_t, z_t = z_{t-1} + k_t, o_t = q_t S_t / (q_t . z_t + eps), accumulated in
    float32 (float64 for float64 inputs); state packed as [B, H, Dk, Dv + 1]. The tests' oracle.
    """
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    acc = accumulation_dtype(q)
    if initial_state is None:
        S, z = q.new_zeros(B, H, Dk, Dv, dtype=acc), q.new_zeros(B, H, Dk, dtype=acc)
    else:
        S, z = initial_state[..., :Dv].to(acc), initial_state[..., Dv].to(acc)
    outputs = []
    for t in range(T):
        q_t, k_t, v_t = q[:, t].to(acc), k[:, t].to(acc), v[:, t].to(acc)  # [B, H, D]
        S = S + k_t[..., :, None] * v_t[..., None, :]
        z = z + k_t
        o_t = (q_t[..., None, :] @ S).squeeze(-2)
        outputs.append(o_t / ((q_t * z).sum(-1, keepdim=True) + eps) if normalize else o_t)
    return torch.stack(outputs, dim=1).to(q.dtype), torch.cat([S, z[..., None]], dim=-1)
