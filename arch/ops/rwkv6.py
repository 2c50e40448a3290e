"""RWKV-6 ("Finch") time mixing: a gated linear attention that reads the state before the current
token, plus a per-channel bonus for the current token.

Per head, with state S in R^{Dk x Dv}, log-decay w_t <= 0 [Dk] and bonus u [Dk]:

    o_t = scale * r_t (S_{t-1} + diag(u) k_t^T v_t),      S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t

Paper: Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence".
The chunked path is the GLA family's `chunked_gated_scan` with ``exclusive=True``.
"""

from __future__ import annotations

import torch

from arch.ops.backend import accumulation_dtype, use_kernel
from arch.ops.gla import chunked_gated_scan


def rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    bonus: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-6 recurrence, chunked: o_t = scale * r_t (S_{t-1} + diag(u) k_t^T v_t),
    S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t.

    Args:
        r, k: [B, T, H, Dk] (receptance, key); v: [B, T, H, Dv].
        log_decay: w_t <= 0, [B, T, H, Dk] (RWKV-6 uses w = -exp(.)).
        bonus: u [H, Dk], the current token's extra weight.
        scale: multiplies r (RWKV-6 itself uses 1).
        initial_state: S_0 [B, H, Dk, Dv] (zeros when None).
        chunk_size: tokens per chunk of the pure-PyTorch path.
        backend: "auto" (flash-linear-attention on CUDA when importable, else PyTorch), "torch" or "fla".

    Returns:
        o [B, T, H, Dv] in r's dtype, and the final state S_T [B, H, Dk, Dv] in float32 (float64 for
        float64 inputs).

    Paper: Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence".
    """
    if use_kernel(backend, "fla", "fla", r, k, v):
        from fla.ops.rwkv6 import chunk_rwkv6

        o, final_state = chunk_rwkv6(
            r,
            k,
            v,
            log_decay,
            bonus,
            scale=scale,
            initial_state=None if initial_state is None else initial_state.float(),
            output_final_state=True,
        )
        return o, final_state.float()
    o, final_state = chunked_gated_scan(
        r,
        k,
        v,
        log_decay,
        scale=scale,
        initial_state=initial_state,
        chunk_size=chunk_size,
        exclusive=True,
        bonus=bonus,
    )
    return o.to(r.dtype), final_state


def rwkv6_naive(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor,
    bonus: torch.Tensor,
    *,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference of `rwkv6` (same signature; chunk_size, backend ignored).

    o_t = scale * r_t (S_{t-1} + diag(u) k_t^T v_t),  S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t,
    accumulated in float32 (float64 for float64 inputs). The tests' oracle. Paper: Peng et al. 2024.
    """
    B, T, H, Dk = r.shape
    acc = accumulation_dtype(r)
    S = r.new_zeros(B, H, Dk, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    u = bonus.to(acc)[..., None]  # [H, Dk, 1]
    outputs = []
    for t in range(T):
        r_t, k_t, v_t, w_t = (x[:, t].to(acc) for x in (r, k, v, log_decay))  # [B, H, D]
        kv_t = k_t[..., :, None] * v_t[..., None, :]
        outputs.append(scale * (r_t[..., None, :] @ (S + u * kv_t)).squeeze(-2))
        S = w_t.exp()[..., None] * S + kv_t
    return torch.stack(outputs, dim=1).to(r.dtype), S
