"""Causal softmax attention with optional sliding window and grouped K/V heads:

    o_t = sum_{s in W(t)} softmax_s(scale * q_t . k_s) v_s,   W(t) = {s <= t, t - s < window}
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
    backend: str = "auto",
) -> torch.Tensor:
    """o_t = sum_{s in W(t)} softmax_s(scale * q_t . k_s) v_s with W(t) = {s <= t, t - s < window}.

    q: [B, T, H, D]; k, v: [B, T, Hkv, D] with H a multiple of Hkv (MHA Hkv=H, GQA, MQA Hkv=1).
    ``window=None`` is full causal attention; a window of W lets each token see itself and the
    W-1 tokens before it. Uses flash-attn on CUDA (fp16/bf16) when installed, else PyTorch SDPA.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.dtype in (torch.float16, torch.bfloat16) and use_kernel(backend, "flash_attn", "flash_attn", q, k, v):
        from flash_attn import flash_attn_func

        window_size = (-1, -1) if window is None else (window - 1, 0)
        return flash_attn_func(q, k, v, softmax_scale=scale, causal=True, window_size=window_size)
    if backend not in ("auto", "torch", "flash_attn"):
        raise ValueError(f"unknown backend {backend!r}: choose 'auto', 'torch' or 'flash_attn'")
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA wants [B, H, T, D]
    gqa = qt.shape[1] != kt.shape[1]
    t_q, t_k = q.shape[1], k.shape[1]
    if window is None and t_q == t_k:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:  # queries are the last t_q positions of the keys (decoding against a cache)
        i = torch.arange(t_k - t_q, t_k, device=q.device)[:, None]
        j = torch.arange(t_k, device=q.device)[None, :]
        mask = (j <= i) if window is None else (j <= i) & (i - j < window)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)
