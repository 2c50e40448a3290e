"""Naive builders of the implicit attention matrices of linear and recurrent mixers, for probing
(`arch.probe`): eager O(T^2) tensors that training never computes, checked against the blocks' fast
paths by o = `arch.probe.mix`(A, v).

    decayed_dot_product      A[t, s] = scale * sum_d q_td k_sd exp(G_td - G_sd), G the cumulative log-decay
                             (GLA, HGRN2, RetNet, linear attention without a decay; RWKV-6 with
                             ``exclusive`` and a bonus)
    diagonal_plus_low_rank   A[t, s] = k_s^T M_{s+1} ... M_t r_t, M = diag(exp(w)) + a b^T (RWKV-7)
    segment_sum              sum_{s<l<=t} x_l for every pair s <= t, each segment summed on its own
    row_normalised           A / (row sum + eps): linear attention's normaliser folded into A

Shapes follow `arch.ops.gla`: q, k [B, T, H, Dk], the log-decay None, [B, T, H] or [B, T, H, Dk];
A comes out [B, H, T, T] in `accumulation_dtype` (float32, float64 for float64 inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arch.ops.backend import accumulation_dtype

# channels of the key dim per pass of the decayed product: each of its [B, H, channels, T, T] temporaries holds
# at most this many elements (at least one channel per pass)
BLOCK_ELEMENTS = 2**22


def segment_sum(x: torch.Tensor, exclusive: bool = False) -> torch.Tensor:
    """x [..., T] -> [..., T, T]: out[t, s] = sum_{s<l<=t} x_l for s <= t (0 on the diagonal), -inf above it;
    with ``exclusive`` sum_{s<l<t} x_l for s < t and -inf from the diagonal on. Each segment is summed on its
    own (a difference of cumulative sums G_t - G_s would cancel in low precision over long inputs)."""
    length = x.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=x.device)
    terms = x.unsqueeze(-1).expand(*x.shape, length).masked_fill(~ones.tril(-1), 0)  # [l, s]: x_l for l > s
    sums = terms.cumsum(-2)
    if exclusive:  # row t holds row t-1's sum
        sums = F.pad(sums[..., :-1, :], (0, 0, 1, 0))
    return sums.masked_fill(~ones.tril(-1 if exclusive else 0), -math.inf)


def decayed_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    exclusive: bool = False,
    bonus: torch.Tensor | None = None,
) -> torch.Tensor:
    """The implicit attention A [B, H, T, T] of the gated scan S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t.

    exclusive=False (o_t = scale * q_t S_t: GLA, HGRN2, RetNet, linear attention without a decay)
        A[t, s] = scale * sum_d q_td k_sd exp(sum_{s<l<=t} g_ld)          s <= t
    exclusive=True (o_t = scale * q_t (S_{t-1} + diag(bonus) k_t^T v_t): RWKV-6)
        A[t, s] = scale * sum_d q_td k_sd exp(sum_{s<l<t} g_ld)           s < t   (the decays strictly between)
        A[t, t] = scale * sum_d q_td bonus_d k_td                         (0 without a bonus)

    and A[t, s] = 0 above the diagonal, so that o_t = sum_s A[t, s] v_s (`arch.probe.mix`). q, k
    [B, T, H, Dk]; log_decay None (no decay), [B, T, H] (a scalar per head: RetNet, Mamba-2) or
    [B, T, H, Dk] (<= 0); bonus [H, Dk]. The exponents are `segment_sum`s, -inf above the diagonal before
    exp (no inf * 0); a scalar decay scales q k^T, a per-channel one enters the sum over d, a block of
    channels at a time so that no temporary outgrows `BLOCK_ELEMENTS`.
    """
    B, T, H, Dk = q.shape
    acc = accumulation_dtype(q)
    q, k = q.to(acc), k.to(acc)
    if log_decay is None:
        rows = torch.arange(T, device=q.device)
        seen = rows[:, None] > rows if exclusive else rows[:, None] >= rows
        A = torch.einsum("bthd,bshd->bhts", q, k).masked_fill(~seen, 0.0)
    else:
        g = (log_decay if log_decay.dim() == 4 else log_decay.unsqueeze(-1)).to(acc).permute(0, 2, 3, 1)  # [B, H, Dg, T]
        if g.shape[2] == 1:
            A = torch.einsum("bthd,bshd->bhts", q, k) * torch.exp(segment_sum(g[:, :, 0], exclusive))
        else:
            qd, kd = q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1)  # [B, H, Dk, T]
            channels = max(1, BLOCK_ELEMENTS // (B * H * T * T))
            A = 0
            for d0 in range(0, Dk, channels):
                d = slice(d0, d0 + channels)
                decay = torch.exp(segment_sum(g[:, :, d], exclusive))  # [B, H, channels, T, T]
                A = A + (qd[:, :, d, :, None] * decay * kd[:, :, d, None, :]).sum(2)
    if exclusive and bonus is not None:
        diagonal = (q * bonus.to(acc) * k).sum(-1)  # [B, T, H]
        A = A + torch.diag_embed(diagonal.transpose(1, 2))
    return scale * A


def diagonal_plus_low_rank(r: torch.Tensor, log_decay: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The implicit attention A [B, H, T, T] of `arch.ops.rwkv7`'s S_t = S_{t-1} M_t + v_t k_t^T, o_t = S_t r_t,
    M_t = diag(exp(log_decay_t)) + a_t b_t^T: unrolled, o_t = sum_{s<=t} v_s (k_s^T M_{s+1} ... M_t r_t), so

        A[t, s] = k_s^T M_{s+1} ... M_t r_t     (s <= t; k_t . r_t on the diagonal; 0 above it).

    r, log_decay, k, a, b [B, T, H, Dk]. One pass per lag l = t - s, all queries at once: each query's
    vector u = M_{s+1} ... M_t r_t takes one more factor M u = exp(w) * u + a (b . u) (no Dk x Dk matrix
    and no inverse of a decay is ever formed), O(T^2 Dk) in all.
    """
    B, T, H, Dk = k.shape
    acc = accumulation_dtype(r)
    r, decay, k, a, b = (t.to(acc).transpose(1, 2) for t in (r, torch.exp(log_decay.to(acc)), k, a, b))  # [B, H, T, Dk]
    A = r.new_zeros(B, H, T, T)
    u = r  # u[t] = M_{t-l+1} ... M_t r_t at lag l
    rows = torch.arange(T, device=r.device)
    A[:, :, rows, rows] = (k * u).sum(-1)
    for lag in range(1, T):
        j = slice(1, T - lag + 1)  # the factor M_{s+1} of the queries t = s + lag, s = 0 .. T-1-lag
        u = decay[:, :, j] * u[:, :, 1:] + a[:, :, j] * (b[:, :, j] * u[:, :, 1:]).sum(-1, keepdim=True)
        A[:, :, rows[lag:], rows[: T - lag]] = (k[:, :, : T - lag] * u).sum(-1)
    return A


def row_normalised(a: torch.Tensor, eps: float) -> torch.Tensor:
    """A[t, s] / (sum_s' A[t, s'] + eps): the normalisation of linear attention, o_t = q_t S_t / (q_t . z_t + eps)
    with z_t = sum_{s<=t} k_s, as a row-dependent divisor folded into A (a [..., T, T])."""
    return a / (a.sum(-1, keepdim=True) + eps)
