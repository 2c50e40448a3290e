"""RWKV-7's state update (Peng et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State
Evolution"), a diagonal-plus-low-rank recurrence, per head with state S in R^{Dv x Dk}:

    S_t = S_{t-1} (diag(exp(log_decay_t)) + a_t b_t^T) + v_t k_t^T,        o_t = S_t r_t

`rwkv7` is the chunked (WY-style) form, `rwkv7_naive` its token-by-token oracle. Both accumulate in
`accumulation_dtype` (float32, float64 for float64 inputs); every exponent is a non-positive decay sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arch.ops.backend import accumulation_dtype


def rwkv7(
    r: torch.Tensor,
    log_decay: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RWKV-7's state update (Peng et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State
    Evolution"), per head with state S in R^{Dv x Dk}:

        S_t = S_{t-1} (diag(exp(log_decay_t)) + a_t b_t^T) + v_t k_t^T,        o_t = S_t r_t

    Shapes: r, log_decay, k, a, b [B, T, H, Dk] (log_decay <= 0; the RWKV-7 layer uses
    log_decay = -exp(w) and a = -kk, b = kk * sigmoid(.), kk the L2-normalised key); v [B, T, H, Dv];
    initial_state [B, H, Dv, Dk] or None. Returns o [B, T, H, Dv] in v's dtype and the final state
    [B, H, Dv, Dk] in float32 (float64 for float64 inputs).

    Chunked form, pure PyTorch (no fused kernel is dispatched: fla's chunk_rwkv7 parametrises the
    decay differently and is not verified here). Inside a chunk with entering state S_0 and inclusive
    cumulative log-decay G_t, the low-rank term e_t = S_{t-1} a_t is the only unknown; it solves the
    unit lower-triangular system
        e_t = S_0 (exp(G_{t-1}) ⊙ a_t) + sum_{s<t} [e_s b_s^T + v_s k_s^T] (exp(G_{t-1} - G_s) ⊙ a_t),
    after which o_t = S_0 (exp(G_t) ⊙ r_t) + sum_{s<=t} [e_s b_s^T + v_s k_s^T] (exp(G_t - G_s) ⊙ r_t)
    and the chunk's last state follow by matmuls. Every exponent is a non-positive decay sum; the
    Python loop runs over chunks only.
    """
    acc = accumulation_dtype(v)
    batch, length, heads, dk = k.shape
    dv = v.shape[-1]
    chunk_size = min(chunk_size, length)
    n_chunks = -(-length // chunk_size)

    def chunked(t: torch.Tensor) -> torch.Tensor:  # [B, T, H, F] -> [B, H, n, C, F]
        t = F.pad(t.to(acc), (0, 0, 0, 0, 0, n_chunks * chunk_size - length))
        return t.view(batch, n_chunks, chunk_size, heads, -1).permute(0, 3, 1, 2, 4)

    r_, w_, k_, v_, a_, b_ = (chunked(t) for t in (r, log_decay, k, v, a, b))
    G = w_.cumsum(-2)  # inclusive cumulative log-decay within each chunk, <= 0
    G_excl = G - w_
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=k.device).tril()
    # upto[t, s] = exp(G_t - G_s) for s <= t; the strictly causal exp(G_{t-1} - G_s) is its shift by one row
    upto = torch.exp(torch.where(causal[..., None], G.unsqueeze(-2) - G.unsqueeze(-3), float("-inf")))
    before = F.pad(upto[..., :-1, :, :], (0, 0, 0, 0, 1, 0))
    keys = torch.stack([b_, k_], -3)  # [B, H, n, 2, C, Dk]
    a_b, a_k = torch.einsum("...ti,...tsi,...jsi->...jts", a_, before, keys).unbind(-3)
    r_b, r_k = torch.einsum("...ti,...tsi,...jsi->...jts", r_, upto, keys).unbind(-3)
    system = torch.eye(chunk_size, dtype=acc, device=k.device) - a_b
    # e = W S_0^T + U, chunk by chunk once S_0 is known
    W = torch.linalg.solve_triangular(system, a_ * torch.exp(G_excl), upper=False, unitriangular=True)
    U = torch.linalg.solve_triangular(system, a_k @ v_, upper=False, unitriangular=True)
    to_end = torch.exp(G[..., -1:, :] - G)  # [B, H, n, C, Dk]
    b_end, chunk_decay = b_ * to_end, torch.exp(G[..., -1, :])
    kv_end = v_.transpose(-1, -2) @ (k_ * to_end)  # [B, H, n, Dv, Dk]

    state = r_.new_zeros(batch, heads, dv, dk) if initial_state is None else initial_state.to(acc)
    starts, lowrank = [], []
    for j in range(n_chunks):
        starts.append(state)
        e = torch.baddbmm(U[:, :, j].flatten(0, 1), W[:, :, j].flatten(0, 1), state.flatten(0, 1).transpose(-1, -2))
        e = e.view(batch, heads, chunk_size, dv)
        lowrank.append(e)
        state = state * chunk_decay[:, :, j, None, :] + e.transpose(-1, -2) @ b_end[:, :, j] + kv_end[:, :, j]
    S0, E = torch.stack(starts, 2), torch.stack(lowrank, 2)
    o = (r_ * torch.exp(G)) @ S0.transpose(-1, -2) + r_b @ E + r_k @ v_
    o = o.permute(0, 2, 3, 1, 4).reshape(batch, n_chunks * chunk_size, heads, dv)[:, :length]
    return o.to(v.dtype), state


def rwkv7_naive(
    r: torch.Tensor,
    log_decay: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token oracle of `rwkv7` (same shapes and dtypes)."""
    acc = accumulation_dtype(v)
    batch, _, heads, dk = k.shape
    S = v.new_zeros(batch, heads, v.shape[-1], dk, dtype=acc) if initial_state is None else initial_state.to(acc)
    outputs = []
    for r_t, w_t, k_t, v_t, a_t, b_t in zip(*(t.to(acc).unbind(1) for t in (r, log_decay, k, v, a, b))):
        S = S * torch.exp(w_t)[..., None, :] + (S @ a_t[..., None]) * b_t[..., None, :] + v_t[..., None] * k_t[..., None, :]
        outputs.append((S @ r_t[..., None]).squeeze(-1))
    return torch.stack(outputs, 1).to(v.dtype), S
