"""Causal softmax attention with optional sliding window and grouped K/V heads:

o_t = sum_{s in W(t)} softmax_s(scale * q_t . k_s) v_s,   W(t) = {s <= t, t - s < window}

and the explicit [T, T] variants (sigmoid, CoPE, selective, multi-token attention). Each explicit op
is `apply_weights` of its ``*_weights`` function (the attention weights [B, H, Tq, Tk] it applies to
the values), so probing a block (`arch.probe`) reads the very weights its forward uses;
`softmax_weights` is the explicit form of `causal_attention`'s probabilities (SDPA never materialises
them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arch.ops.backend import use_kernel


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """o_t = sum_{s in W(t)} softmax_s(scale * q_t . k_s + bias_ts) v_s with W(t) = {s <= t, t - s < window}.

    q: [B, T, H, D]; k, v: [B, T, Hkv, D] with H a multiple of Hkv (MHA Hkv=H, GQA, MQA Hkv=1).
    ``window=None`` is full causal attention; a window of W lets each token see itself and the
    W-1 tokens before it; beyond T = 2W the PyTorch path is blocked (`local_attention`, O(T W)).
    Uses flash-attn on CUDA (fp16/bf16) when installed, else PyTorch SDPA. ``bias``: an additive
    logit bias [B, H, Tq, Tk] (the forgetting transformer's decay), through SDPA's float mask.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if bias is not None:
        return _biased(q, k, v, bias, window, scale)
    if q.dtype in (torch.float16, torch.bfloat16) and use_kernel(backend, "flash_attn", "flash_attn", q, k, v):
        from flash_attn import flash_attn_func

        window_size = (-1, -1) if window is None else (window - 1, 0)
        return flash_attn_func(q, k, v, softmax_scale=scale, causal=True, window_size=window_size)
    if backend not in ("auto", "torch", "flash_attn"):
        raise ValueError(f"unknown backend {backend!r}: choose 'auto', 'torch' or 'flash_attn'")
    t_q, t_k = q.shape[1], k.shape[1]
    if window is not None and t_q == t_k and t_q > 2 * window:
        return local_attention(q, k, v, window, scale)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA wants [B, H, T, D]
    gqa = qt.shape[1] != kt.shape[1]
    if window is None and t_q == t_k:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:  # queries are the last t_q positions of the keys (decoding against a cache)
        i = torch.arange(t_k - t_q, t_k, device=q.device)[:, None]
        j = torch.arange(t_k, device=q.device)[None, :]
        mask = (j <= i) if window is None else (j <= i) & (i - j < window)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


def _visible(t_q: int, t_k: int, window: int | None, device) -> torch.Tensor:
    """[Tq, Tk] boolean: the queries are the last Tq positions of the Tk keys."""
    i = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return (j <= i) if window is None else (j <= i) & (i - j < window)


def _biased(q, k, v, bias, window, scale) -> torch.Tensor:
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    mask = bias.to(qt.dtype).masked_fill(~_visible(q.shape[1], k.shape[1], window, q.device), float("-inf"))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=qt.shape[1] != kt.shape[1])
    return out.transpose(1, 2)


def per_query_head(x: torch.Tensor, heads: int) -> torch.Tensor:
    """K or V [B, T, Hkv, D] with each K/V head repeated for the query heads that share it: [B, T, heads, D]."""
    return x.repeat_interleave(heads // x.shape[2], dim=2)


def scaled_scores(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """scale * q . k [B, H, Tq, Tk] (scale default 1 / sqrt(D)); q: [B, Tq, H, D], k: [B, Tk, Hkv, D]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.einsum("bthd,bshd->bhts", q, per_query_head(k, q.shape[2])) * scale


def explicit_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit paths' scaled scores [B, H, Tq, Tk] and per-query-head values [B, Tk, H, Dv]
    (K/V heads repeated for GQA)."""
    return scaled_scores(q, k, scale), per_query_head(v, q.shape[2])


def apply_weights(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o [B, Tq, H, Dv] = sum_s weights[:, h, t, s] v[:, s, h]: attention weights [B, H, Tq, Tk] applied
    to the values [B, Tk, Hkv, Dv] (K/V heads repeated for GQA)."""
    return torch.einsum("bhts,bshd->bthd", weights, per_query_head(v, weights.shape[1]))


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, scale: float | None = None) -> torch.Tensor:
    """Sliding-window causal attention in O(T W): queries in blocks of W, each block attending to the
    keys from W - 1 before its first query to its last (2W - 1 keys), so no T x T score matrix exists.
    Same layouts and result as `causal_attention(..., window=W)` (its naive twin is
    `sliding_window_attention_naive`)."""
    b, t, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    block, span = window, 2 * window - 1
    n = -(-t // block)
    pad = n * block - t
    qb = F.pad(q, (0, 0, 0, 0, 0, pad)).view(b, n, block, h, d).transpose(2, 3)  # [B, n, H, block, D]

    def windows(x: torch.Tensor) -> torch.Tensor:  # [B, n, Hkv, span, D]: keys W-1 before each block to its end
        x = F.pad(x, (0, 0, 0, 0, window - 1, pad))
        return x.unfold(1, span, block).permute(0, 1, 2, 4, 3)

    kb, vb = windows(k), windows(v)
    r = torch.arange(block, device=q.device)[:, None]  # query offset in its block
    c = torch.arange(span, device=q.device)[None, :]  # key offset in its window (key = block start - W + 1 + c)
    start = torch.arange(n, device=q.device)[:, None, None] * block
    mask = (c >= r) & (c <= r + window - 1) & (start - (window - 1) + c >= 0)  # [n, block, span]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[None, :, None], scale=scale, enable_gqa=kb.shape[2] != h)
    return out.transpose(2, 3).reshape(b, n * block, h, v.shape[-1])[:, :t]


def softmax_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`causal_attention`'s probabilities, explicit: softmax_s(scale * q_t . k_s + bias_ts) over
    W(t) = {s <= t, t - s < window}, 0 elsewhere, [B, H, Tq, Tk] (the queries are the last Tq positions
    of the keys); in float32 (float64 for float64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = scaled_scores(q.to(acc), k.to(acc), scale)
    if bias is not None:
        scores = scores + bias.to(acc)
    return scores.masked_fill(~_visible(q.shape[1], k.shape[1], window, q.device), float("-inf")).softmax(-1)


def sliding_window_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The oracle: explicit scores over all T x T pairs, masked to W(t) = {s <= t, t - s < window},
    softmax, weighted values (`softmax_weights`); accumulates in float32 (float64 for float64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    return apply_weights(softmax_weights(q, k, window, scale, bias), v.to(acc)).to(q.dtype)


def sigmoid_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: float = 0.0, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """o_t = sum_{s in W(t)} sigmoid(scale * q_t . k_s + bias) v_s: attention weights that are not
    normalised over the keys (Gu et al. 2024, "When Attention Sink Emerges in Language Models").
    Explicit [T, T] weights (no SDPA form); layouts as `causal_attention` (GQA by fewer K/V heads)."""
    return apply_weights(sigmoid_weights(q, k, bias=bias, window=window, scale=scale), v)


def sigmoid_weights(
    q: torch.Tensor, k: torch.Tensor, *, bias: float = 0.0, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """`sigmoid_attention`'s weights [B, H, Tq, Tk]: sigmoid(scale * q_t . k_s + bias) on W(t), 0 elsewhere."""
    return torch.sigmoid(scaled_scores(q, k, scale) + bias) * _visible(q.shape[1], k.shape[1], window, q.device)


def sigmoid_attention_naive(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: float = 0.0, window: int | None = None, scale: float | None = None
) -> torch.Tensor:
    """The oracle of `sigmoid_attention`: query by query, key by key."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[2] // k.shape[2]
    out = torch.zeros_like(q)
    offset = k.shape[1] - q.shape[1]
    for t in range(q.shape[1]):
        for s in range(t + offset + 1):
            if window is not None and t + offset - s >= window:
                continue
            for h in range(q.shape[2]):
                w = torch.sigmoid((q[:, t, h] * k[:, s, h // group]).sum(-1) * scale + bias)
                out[:, t, h] += w[:, None] * v[:, s, h // group]
    return out


def cope_bias(q: torch.Tensor, logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Contextual position bias (Golovneva et al. 2024, "Contextual Position Encoding"), added to causal
    attention logits [B, H, Tq, Tk] (already scaled and masked with -inf; the queries are the last Tq
    positions): gates g_ij = sigmoid(logits_ij) on visible keys, positions p_ij = sum_{t=j..i} g_it
    (a count of the gated tokens from key j to the query), clamped to the table's last entry, and the
    bias z_ij = q_i . e[p_ij] interpolated between the two integer positions around p_ij.
    q: [B, Tq, H, D]; table: [D, npos] (shared by the heads)."""
    gates = torch.sigmoid(logits)  # masked logits (-inf) give 0
    positions = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=table.shape[-1] - 1)  # [B, H, Tq, Tk]
    z = torch.einsum("bthd,dn->bhtn", q, table.to(q.dtype))  # q . e[p] for every integer p
    low = positions.floor()
    frac = positions - low
    z_low = z.gather(-1, low.long())
    z_high = z.gather(-1, positions.ceil().long())
    return frac * z_high + (1 - frac) * z_low


def cope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention with CoPE's bias (`cope_bias`), explicit [T, T] path; GQA by fewer K/V heads."""
    return apply_weights(cope_weights(q, k, table, scale), v)


def cope_weights(q: torch.Tensor, k: torch.Tensor, table: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """`cope_attention`'s probabilities [B, H, Tq, Tk]."""
    logits = scaled_scores(q, k, scale)
    logits = logits.masked_fill(~_visible(q.shape[1], k.shape[1], None, q.device), float("-inf"))
    logits = logits + cope_bias(q, logits, table)
    return logits.softmax(-1)


def selection_scores(logits0: torch.Tensor) -> torch.Tensor:
    """Selective attention's selection (Leviathan et al. 2024, §3) from head 0's scaled logits
    [B, Tq, Tk] (the queries are the last Tq positions of the keys; key 0 is the sequence's first
    token): ReLU over the visible keys, nothing selected for the first token nor for a query's own
    token. Returns S [B, Tq, Tk] >= 0; a query's logits are lowered by the S rows of the queries
    before it."""
    t_q, t_k = logits0.shape[-2:]
    visible = _visible(t_q, t_k, None, logits0.device)
    own = torch.arange(t_k - t_q, t_k, device=logits0.device)[:, None] == torch.arange(t_k, device=logits0.device)[None, :]
    s = torch.relu(logits0).masked_fill(~visible | own, 0.0)
    return torch.cat([torch.zeros_like(s[..., :1]), s[..., 1:]], -1)


def selective_keep(f: torch.Tensor, budget: int) -> torch.Tensor:
    """Selective attention's context pruning under a budget: which keys query i still holds [B, T, T]
    (bool), given F [B, T, T] (F_ij: the mask key j accumulated from the queries before i). Token i
    joins the context at query i; when the context then holds more than ``budget`` tokens, the one with
    the largest F_ij is dropped for good (the first token of the sequence and token i itself never; ties
    go to the earliest), so at most ``budget`` keys are held at any query. This is the eviction
    `Attention.step` performs on its cache, written over a whole sequence."""
    b, t, _ = f.shape
    if budget < 2:
        raise ValueError(f"a selective context budget holds the first token and the current one: >= 2, got {budget}")
    held = torch.zeros(b, t, dtype=torch.bool, device=f.device)
    rows, batch = [], torch.arange(b, device=f.device)
    for i in range(t):
        held[:, i] = True
        if min(i, budget) + 1 > budget:
            candidates = f[:, i].masked_fill(~held, float("-inf"))
            candidates[:, 0] = candidates[:, i] = float("-inf")
            held[batch, candidates.argmax(-1)] = False
        rows.append(held.clone())
    return torch.stack(rows, 1)


def selective_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, budget: int | None = None
) -> torch.Tensor:
    """Causal softmax attention in which earlier tokens mask later ones (Leviathan et al. 2024):
    every head's logits minus F_ij = sum_{i' < i} S_i'j, S = `selection_scores` of head 0. Parameter-free;
    explicit [T, T] path; GQA by fewer K/V heads. ``budget``: at most that many keys held per query,
    the most-masked dropped first (`selective_keep`); q and k then cover the same positions."""
    return apply_weights(selective_weights(q, k, scale, budget), v)


def selective_weights(q: torch.Tensor, k: torch.Tensor, scale: float | None = None, budget: int | None = None) -> torch.Tensor:
    """`selective_attention`'s probabilities [B, H, Tq, Tk]."""
    logits = scaled_scores(q, k, scale)
    s = selection_scores(logits[:, 0])
    f = F.pad(s.cumsum(-2), (0, 0, 1, 0))[..., :-1, :]  # query i accumulates the rows of queries before it
    hidden = ~_visible(q.shape[1], k.shape[1], None, q.device)
    if budget is not None:
        if q.shape[1] != k.shape[1]:
            raise ValueError("selective attention with a budget needs the queries of every key (Tq == Tk)")
        hidden = hidden | ~selective_keep(f, budget)
    logits = (logits - f[:, None]).masked_fill(hidden if hidden.dim() == 2 else hidden[:, None], float("-inf"))
    return logits.softmax(-1)


def mta_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel: torch.Tensor | None,
    head_mix: torch.Tensor | None,
    scale: float | None = None,
    past_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-token attention (Golovneva et al. 2025, "Multi-Token Attention"), the pre-softmax part:
    scores q.k scaled, zeroed above the diagonal, convolved per head over (query, key) with ``kernel``
    [H, c_q, c_k] (causal over the c_q - 1 previous queries, centred over c_k keys), mixed across heads by
    ``head_mix`` [H, H], then masked causally and softmaxed. q: [B, Tq, H, D] (the last Tq positions of
    the keys); ``past_q`` [B, c_q - 1, H, D]: the queries before q (decoding; zeros at the start)."""
    return apply_weights(mta_weights(q, k, kernel, head_mix, scale, past_q), v)


def mta_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    kernel: torch.Tensor | None,
    head_mix: torch.Tensor | None,
    scale: float | None = None,
    past_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """`mta_attention`'s probabilities [B, H, Tq, Tk]."""
    t_q, t_k = q.shape[1], k.shape[1]
    c_q = 1 if kernel is None else kernel.shape[1]
    extra = 0
    if kernel is not None and c_q > 1:
        history = past_q if past_q is not None else q.new_zeros(q.shape[0], c_q - 1, *q.shape[2:])
        q_all, extra = torch.cat([history, q], 1), c_q - 1  # the rows the convolution reads
    else:
        q_all = q
    logits = scaled_scores(q_all, k, scale)  # [B, H, extra + Tq, Tk]
    rows = torch.arange(t_k - t_q - extra, t_k, device=q.device)[:, None]  # position of each row's query
    logits = logits.masked_fill(torch.arange(t_k, device=q.device)[None, :] > rows, 0.0)  # Mask_0
    if kernel is not None:
        c_k = kernel.shape[2]
        padded = F.pad(logits, ((c_k - 1) // 2, c_k // 2, 0 if extra else c_q - 1, 0))
        logits = F.conv2d(padded, kernel.unsqueeze(1).to(logits.dtype), groups=kernel.shape[0])  # [B, H, Tq, Tk]
    if head_mix is not None:
        logits = torch.einsum("hg,bgts->bhts", head_mix.to(logits.dtype), logits)
    return logits.masked_fill(~_visible(t_q, t_k, None, q.device), float("-inf")).softmax(-1)
