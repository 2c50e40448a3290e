"""The one FLOP counter: forward FLOPs per token of a model at sequence length T.

Counted from what the pure-PyTorch path computes: every ``nn.Linear`` (2 * in * out per token,
the output head included), plus the sequence-mixing work that no Linear shows (attention's QK and
AV products, averaged over causal positions). Training costs 3x the forward (backward = 2x).
`train.py` logs ``train/flops`` from this count and MFU is measured against it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from arch.blocks.attention import Attention


def _mean_context(seq_len: int, window: int | None) -> float:
    """Average number of keys a causal query sees over positions 1..T (each capped at the window)."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def _attention_flops(block: Attention, seq_len: int) -> float:
    # q.k and p.v: 2 multiply-adds each per (head, head dim, visible key)
    return 4 * block.n_heads * block.head_dim * _mean_context(seq_len, block.window)


MIXING_FLOPS: dict[type, Callable[[nn.Module, int], float]] = {Attention: _attention_flops}


def forward_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward FLOPs per token: matmuls of every Linear plus each block's mixing term."""
    total = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features
        counter = MIXING_FLOPS.get(type(module))
        if counter is not None:
            total += counter(module, seq_len)
    return total


def training_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward + backward FLOPs per token (backward counted as twice the forward)."""
    return 3 * forward_flops_per_token(model, seq_len)
