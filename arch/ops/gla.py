"""Gated linear attention: one chunked scan for GLA, HGRN2, RetNet, Mamba-2/SSD and linear attention.

Per head, with state S in R^{Dk x Dv} and log-decay g_t <= 0 (a vector [Dk], a scalar, or 0):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

Papers: Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training"
(GLA, chunkwise form); Sun et al. 2023 (RetNet); Qin et al. 2024 (HGRN2); Dao & Gu 2024 (Mamba-2/SSD).

The chunked form (`chunked_gated_scan`) is also the core of RWKV-6 (`arch.ops.rwkv6`), which reads the
state *before* the current token plus a diagonal bonus. `gla_step` is the recurrence for one token: the
decode step of every block on this op (GLA, HGRN2, RetNet, Mamba-2, linear attention) and, token after
token, the reference `gated_linear_attention_naive`, so the oracle and decoding share one equation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arch.ops.backend import accumulation_dtype, use_kernel


def _decay_last_dim(log_decay: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """[B, T, H, Dk] or [B, T, H, 1] log-decay (a scalar decay broadcasts over Dk)."""
    if log_decay is None:
        return q.new_zeros(*q.shape[:3], 1, dtype=accumulation_dtype(q))
    return log_decay if log_decay.dim() == 4 else log_decay.unsqueeze(-1)


def _block_sizes(C: int) -> list[int]:
    """C, C/4, C/16, ..., 1: the nested blocks of the intra-chunk computation (4 does not divide: jump to 1)."""
    sizes = [C]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 4 if sizes[-1] % 4 == 0 else 1)
    return sizes


def _from_earlier_sub_blocks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, Gq: torch.Tensor, G: torch.Tensor, outer: int, inner: int
) -> torch.Tensor:
    """sum_s A_ts v_s over keys s in an earlier `inner`-token sub-block of the same `outer`-token block,
    A_ts = sum_d q_td k_sd exp(Gq_td - G_sd), as matmuls (inputs [..., C, D], output [..., C, Dv]).

    The reference of query sub-block i is the row just before it (G = 0 before the chunk): then
    exp(Gq_t - G_ref) and exp(G_ref - G_s) both have exponents <= 0, and their product is exact.
    """
    C, Dg = q.shape[-2], G.shape[-1]
    blocks, r = C // outer, outer // inner
    G_ref = F.pad(G, (0, 0, 1, 0))[..., 0:C:inner, :].unflatten(-2, (blocks, r))  # [..., blocks, r, Dg]

    def sub_blocks(x: torch.Tensor) -> torch.Tensor:  # [..., C, D] -> [..., blocks, r, inner, D]
        return x.unflatten(-2, (blocks, r, inner))

    q_rel = sub_blocks(q) * torch.exp(sub_blocks(Gq) - G_ref.unsqueeze(-2))
    before = torch.arange(outer, device=q.device) < inner * torch.arange(r, device=q.device).unsqueeze(-1)
    exponent = G_ref.unsqueeze(-2) - G.unflatten(-2, (blocks, outer)).unsqueeze(-3)  # [..., blocks, r, outer, Dg]
    key_factor = torch.exp(torch.where(before.unsqueeze(-1), exponent, -math.inf))  # masked *before* exp
    k_block = k.unflatten(-2, (blocks, outer)).unsqueeze(-3)  # [..., blocks, 1, outer, Dk]
    if Dg == 1:  # scalar decay scales A's columns: no copy of k per sub-block
        A = (q_rel @ k_block.transpose(-1, -2)) * key_factor.transpose(-1, -2)
    else:
        A = q_rel @ (k_block * key_factor).transpose(-1, -2)  # [..., blocks, r, inner, outer]
    return (A @ v.unflatten(-2, (blocks, outer)).unsqueeze(-3)).flatten(-4, -2)


# On CPU the scan runs over segments of the sequence whose largest temporary holds at most this many
# elements (8 MiB in float32). Larger temporaries are mapped fresh from the OS on every call by the C
# allocator, and their page faults can cost more than the arithmetic; with segments the time grows
# linearly in T (python -m eval.bench --ops gla shows it on a given machine).
CPU_SEGMENT_ELEMENTS = 2**21


def _chunk(chunk_size: int, length: int) -> int:
    """Tokens per chunk for an input of ``length``: a short input is not padded to a full chunk."""
    return min(chunk_size, 16 * math.ceil(length / 16))


def _segment_length(q: torch.Tensor, v: torch.Tensor, chunk: int) -> int:
    """Tokens per segment: a multiple of the chunk, at least 4 chunks; the whole input off the CPU."""
    B, T, H, Dk = q.shape
    if q.device.type != "cpu":
        return T
    per_token = B * H * max(4 * Dk, Dk * v.shape[-1] // chunk)  # intra-chunk blocks; chunk states
    return max(4 * chunk, CPU_SEGMENT_ELEMENTS // per_token // chunk * chunk)


def chunked_gated_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    *,
    scale: float,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
    exclusive: bool = False,
    bonus: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel gated scan, pure PyTorch; the shared core of GLA and RWKV-6.

    Computes, per head, S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t and
        o_t = scale * q_t S_t                                   (exclusive=False: GLA family)
        o_t = scale * q_t (S_{t-1} + diag(bonus) k_t^T v_t)     (exclusive=True: RWKV-6)

    Shapes: q, k [B, T, H, Dk]; v [B, T, H, Dv]; log_decay None, [B, T, H] or [B, T, H, Dk] (<= 0);
    bonus [H, Dk] or None; initial_state [B, H, Dk, Dv]. Returns o [B, T, H, Dv] and the final state
    [B, H, Dk, Dv], both in float32 (float64 for float64 inputs).

    Algorithm (GLA paper, Sec. 4; flash-linear-attention's chunk_gla): T is cut into chunks of C tokens
    and G is the cumulative log-decay restarted in every chunk. (1) Across chunks the state is carried by
    a loop over chunks only. (2) Inside a chunk, pairs of sub-blocks below the diagonal are matmuls of
    q and k rescaled relative to a reference row, so every exponent is <= 0. This is applied at nested
    block sizes C -> C/4 -> ... -> 1 (64 -> 16 -> 4 -> 1) instead of stopping at an explicit
    [16, 16, Dk] decay tensor for the diagonal sub-blocks: the same exact result with 12 instead of
    20 times the size of k in elementwise temporaries. (3) What is left is t = s:
    q_t . k_t (GLA) or q_t . (bonus * k_t) (RWKV-6). Without a decay (plain linear attention) there is
    nothing to rescale: (2) and (3) are one causal-masked q k^T per chunk, with no exponentials (Based's
    Taylor features make q and k 273 wide, where the nested levels' rescaled copies of q and k would
    dominate). Masked exponents are set to -inf before exp, so neither forward nor backward sees inf * 0.
    On CPU, long inputs run segment by segment through the state hand-over, so no temporary outgrows
    `CPU_SEGMENT_ELEMENTS`.

    The default chunk is 16 tokens: the nested levels above 16 waste 5/8 of their matmul on masked
    pairs, while chunk states are exact and cheap. Without a decay there are no nested levels to save
    and the chunk states dominate, so `linear_attention` (Based) keeps chunks of 64.
    (flash-linear-attention picks its own chunking.)
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    T = q.shape[1]
    segment = _segment_length(q, v, _chunk(chunk_size, T))
    if T <= segment:
        return _scan_segment(q, k, v, log_decay, scale, initial_state, chunk_size, exclusive, bonus)
    # the state hand-over: segment after segment; split (not slicing) keeps the backward linear in T
    state, outputs = initial_state, []
    pieces = [x.split(segment, dim=1) for x in (q, k, v)]
    decays = log_decay.split(segment, dim=1) if log_decay is not None else [None] * len(pieces[0])
    for q_i, k_i, v_i, g_i in zip(*pieces, decays):
        o_i, state = _scan_segment(q_i, k_i, v_i, g_i, scale, state, chunk_size, exclusive, bonus)
        outputs.append(o_i)
    return torch.cat(outputs, dim=1), state


def _scan_segment(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    chunk_size: int,
    exclusive: bool,
    bonus: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`chunked_gated_scan` on one segment."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    acc = accumulation_dtype(q)
    C = _chunk(chunk_size, T)
    N = math.ceil(T / C)

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> [B, H, N, C, D], zero-padded in time
        x = F.pad(x.to(acc), (0, 0, 0, 0, 0, N * C - T))
        return x.transpose(1, 2).reshape(B, H, N, C, x.shape[-1])

    # padded steps have g = 0 and k = 0: they leave the state unchanged
    q, k, v, g = map(chunked, (q, k, v, _decay_last_dim(log_decay, q)))
    G = g.cumsum(-2)  # log-decay from the chunk start through t (inclusive)
    # queries see the decay through t (GLA) or through t-1 (RWKV-6); shifting keeps G_{t-1} - G_{t-1} = 0 exact
    Gq = F.pad(G[..., :-1, :], (0, 0, 1, 0)) if exclusive else G

    # (1) across chunks: h_{n+1} = exp(G_last) h_n + (k exp(G_last - G))^T v
    state = q.new_zeros(B, H, Dk, Dv) if initial_state is None else initial_state.to(acc)
    entering = []
    if log_decay is None:  # plain linear attention: nothing to rescale (the Taylor map makes q, k wide)
        for kv_i in (k.transpose(-1, -2) @ v).unbind(2):  # unbind: one backward op, not N
            entering.append(state)
            state = state + kv_i
        o = q @ torch.stack(entering, dim=2)
        if not exclusive:  # (2+3) one causal-masked q k^T per chunk
            causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
            o = o + ((q @ k.transpose(-1, -2)) * causal) @ v
            return (scale * o).flatten(2, 3)[:, :, :T].transpose(1, 2).contiguous(), state
    else:
        G_last = G[..., -1:, :]
        chunk_kv = (k * torch.exp(G_last - G)).transpose(-1, -2) @ v  # [B, H, N, Dk, Dv]
        chunk_decay = torch.exp(G_last).transpose(-1, -2)  # [B, H, N, Dk or 1, 1]
        for decay_i, kv_i in zip(chunk_decay.unbind(2), chunk_kv.unbind(2)):
            entering.append(state)
            state = decay_i * state + kv_i
        o = (q * torch.exp(Gq)) @ torch.stack(entering, dim=2)  # [B, H, N, C, Dv]

    # (2) inside a chunk: earlier sub-blocks at every nesting level
    sizes = _block_sizes(C)
    for outer, inner in zip(sizes[:-1], sizes[1:]):
        o = o + _from_earlier_sub_blocks(q, k, v, Gq, G, outer, inner)

    # (3) the current token: exp(Gq_t - G_t) = 1 for GLA; RWKV-6 weighs it by the bonus instead
    if not exclusive or bonus is not None:
        k_now = k if bonus is None else k * bonus.to(acc)[None, :, None, None, :]
        o = o + (q * k_now).sum(-1, keepdim=True) * v

    o = (scale * o).flatten(2, 3)[:, :, :T].transpose(1, 2).contiguous()
    return o, state


def gated_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention (GLA, HGRN2, RetNet, Mamba-2/SSD, linear attention), chunked.

    Per head: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,  o_t = scale * q_t S_t.

    Args:
        q, k: [B, T, H, Dk]; v: [B, T, H, Dv].
        log_decay: g_t <= 0. None (plain linear attention), [B, T, H] (one scalar per head: RetNet,
            Mamba-2/SSD) or [B, T, H, Dk] (GLA, HGRN2).
        scale: defaults to Dk ** -0.5.
        initial_state: S_0 [B, H, Dk, Dv] (zeros when None).
        chunk_size: tokens per chunk of the pure-PyTorch path (16 is the fastest on CPU).
        backend: "auto" (flash-linear-attention on CUDA when importable, else PyTorch), "torch" or "fla".

    Returns:
        o [B, T, H, Dv] in q's dtype, and the final state S_T [B, H, Dk, Dv] in float32 (float64
        for float64 inputs); running on x[:, :t] then on x[:, t:] from that state equals one run on x.

    Paper: Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training".
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_kernel(backend, "fla", "fla", q, k, v):
        state = None if initial_state is None else initial_state.float()  # fla keeps states in float32
        if log_decay is not None and log_decay.dim() == 4:
            from fla.ops.gla import chunk_gla

            o, final_state = chunk_gla(q, k, v, log_decay, scale=scale, initial_state=state, output_final_state=True)
        else:
            from fla.ops.simple_gla import chunk_simple_gla

            o, final_state = chunk_simple_gla(
                q, k, v, g=log_decay, scale=scale, initial_state=state, output_final_state=True
            )
        return o, final_state.float()
    o, final_state = chunked_gated_scan(
        q, k, v, log_decay, scale=scale, initial_state=initial_state, chunk_size=chunk_size
    )
    return o.to(q.dtype), final_state


def gated_linear_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 16,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference of `gated_linear_attention` (same signature; chunk_size, backend ignored).

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,  o_t = scale * q_t S_t, accumulated in float32 (float64
    for float64 inputs). The tests' oracle. Paper: Yang et al. 2024 (GLA), Eq. 1.
    """
    B, T, H, Dk = q.shape
    acc = accumulation_dtype(q)
    scale = Dk**-0.5 if scale is None else scale
    S = q.new_zeros(B, H, Dk, v.shape[-1], dtype=acc) if initial_state is None else initial_state.to(acc)
    outputs = []
    for t in range(T):
        g_t = None if log_decay is None else log_decay[:, t : t + 1]
        o_t, S = gla_step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g_t, S, scale)
        outputs.append(o_t)
    return torch.cat(outputs, dim=1), S


def gla_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_decay: torch.Tensor | None,
    state: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t.

    q, k [B, 1, H, Dk]; v [B, 1, H, Dv]; log_decay None, [B, 1, H] or [B, 1, H, Dk]; state
    [B, H, Dk, Dv]. Returns o [B, 1, H, Dv] in q's dtype and the new state in `accumulation_dtype`
    (float32, float64 for float64 inputs), the dtypes `gated_linear_attention` uses, so forward and
    step states interchange.
    """
    acc = accumulation_dtype(q)
    q_t, k_t, v_t = (t[:, 0].to(acc) for t in (q, k, v))
    S = state.to(acc)
    if log_decay is not None:
        g = log_decay[:, 0].to(acc)
        S = S * (g.exp()[..., None, None] if g.dim() == 2 else g.exp()[..., None])
    S = S + k_t[..., :, None] * v_t[..., None, :]
    o = scale * (q_t[..., None, :] @ S).squeeze(-2)
    return o.unsqueeze(1).to(q.dtype), S
