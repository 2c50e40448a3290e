"""The one FLOP counter: forward FLOPs per token of a model at sequence length T.

Counted from what the pure-PyTorch path computes: every ``nn.Linear`` (2 * in * out per token,
the output head included), plus the sequence-mixing work that no Linear shows (attention's QK and
AV products, averaged over causal positions; scans, convolutions, gates). Training costs 3x the
forward (backward = 2x). `train.py` logs ``train/flops`` from this count and MFU is measured against it.

A mixing term is the sum of matmul-like work (matmuls, einsums, convolutions: what
``torch.utils.flop_counter.FlopCounterMode`` also counts) and elementwise work (exponentials,
gates, the multiply-adds of a diagonal scan: invisible to that counter). `ELEMENTWISE_FLOPS` holds
the second part on its own, so tests compare the first against the counter exactly. Elementwise
counts charge 1 FLOP per arithmetic op or transcendental per element (approximate by nature);
norms (LayerNorm, RMSNorm, GroupNorm) are not counted anywhere, like the residual adds.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from torch import nn

from arch.blocks.attention import Attention
from arch.blocks.griffin import RGLRUBlock
from arch.blocks.h3 import H3
from arch.blocks.mamba import Mamba
from arch.blocks.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix
from arch.blocks.rwkv7 import RWKV7TimeMix
from arch.ops.gla import _block_sizes
from arch.ops.rwkv6 import rwkv6
from arch.ops.scan import rwkv7


def _mean_context(seq_len: int, window: int | None) -> float:
    """Average number of keys a causal query sees over positions 1..T (each capped at the window)."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def _attention_flops(block: Attention, seq_len: int) -> float:
    # q.k and p.v: 2 multiply-adds each per (head, head dim, visible key)
    return 4 * block.n_heads * block.head_dim * _mean_context(seq_len, block.window)


def _default_chunk(op: Callable) -> int:
    return inspect.signature(op).parameters["chunk_size"].default


def _padding(seq_len: int, chunk: int) -> float:
    """Tokens processed per real token when T is padded up to whole chunks."""
    return math.ceil(seq_len / chunk) * chunk / seq_len


# Each block: (matmul-like FLOPs, elementwise FLOPs) per token at sequence length T, beyond its Linears.


def _mamba(block: Mamba, seq_len: int) -> tuple[float, float]:
    d, n = block.d_inner, block.d_state
    # matmul-like: depthwise conv 2 K d; the scan's output contraction y = C_t s_t, 2 d N.
    # elementwise: the chunked scan visits every state twice (chunk-local pass, then the pass from
    # the entering states), each visit 5 ops per state (delta*A, exp, decay multiply, input
    # multiply-add); 10 per channel for conv bias + silu, softplus, delta*u, D skip, silu(z) gate.
    return 2 * block.d_conv * d + 2 * d * n, 10 * d * n + 10 * d


def _rglru(block: RGLRUBlock, seq_len: int) -> tuple[float, float]:
    d = block.d_rnn
    # matmul-like: conv 2 K d; two block-diagonal gates 2 * 2 d head_dim.
    # elementwise per channel: gate biases and sigmoids 4, log a 2, sqrt(1 - a^2) 3, input 2,
    # scan 2 passes x 4, conv bias 1, gelu branch and product 2.
    return 2 * block.d_conv * d + 4 * d * block.head_dim, 22 * d


def _h3(block: H3, seq_len: int) -> tuple[float, float]:
    channels, n = block.channels, block.d_state
    # matmul-like: shift conv 2 K d_model; q times y per head 2 H P^2.
    # elementwise: k v^T 1 per channel; per state: input scaling 1, scan 2 passes x 4, C readout 2;
    # D skip 2 per channel.
    return 2 * block.shift_len * block.n_heads * block.head_dim + 2 * channels, 11 * channels * n + 3 * channels


def _rwkv6_time(block: RWKV6TimeMix, seq_len: int) -> tuple[float, float]:
    h, p = block.n_heads, block.head_dim
    d, n_mixed, rank = h * p, *block.mix_up.shape[:2]
    chunk = min(_default_chunk(rwkv6), 16 * math.ceil(seq_len / 16))
    # chunked_gated_scan per head and token: chunk state update and inter-chunk read 2 x 2 P^2, and at
    # every nesting level (outer -> inner) the sub-block scores and values 2 * outer * 2P.
    levels = _block_sizes(chunk)[:-1]
    scan = h * (4 * p * p + sum(4 * outer * p for outer in levels)) * _padding(seq_len, chunk)
    # elementwise: token shift and ddlerp 13 d + 5 tanh(rank) + log-decay 2 d; the scan's decay factors
    # (~4 per level per channel, cumsum, bonus term 3); silu gate 3 d.
    elementwise = 18 * d + n_mixed * rank + (4 * len(levels) + 6) * d
    return 2 * n_mixed * rank * d + scan, elementwise


def _rwkv_channel(block: RWKV6ChannelMix, seq_len: int) -> tuple[float, float]:
    d, hidden = block.mu_k.numel(), block.k_proj.out_features
    # all matmuls are Linears; elementwise: shift and mix 3 d (+3 d, sigmoid and gate 2 d with the
    # receptance), relu and square 2 hidden.
    return 0.0, 3 * d + 2 * hidden + (5 * d if block.r_proj is not None else 0)


def _rwkv7_time(block: RWKV7TimeMix, seq_len: int) -> tuple[float, float]:
    h, p = block.n_heads, block.head_dim
    chunk = min(_default_chunk(rwkv7), seq_len)
    # rwkv7's chunked form per head and token: the four intra-chunk score einsums 4 x 2 C P, e = U + W S0
    # and its value term 2 P^2 + 2 C P, the chunk's end state 2 x 2 P^2, the output 2 P^2 + 2 x 2 C P.
    scan = h * (8 * p * p + 14 * chunk * p) * _padding(seq_len, chunk)
    # elementwise: shift and mixes 13 d, gates and log-decay ~10 d, kk normalisation 4 d, k scaling 3 d,
    # bonus 4 d, gate 1 d; the scan's decay tensors (~5 C P per head) and triangular solves (C * 2P).
    elementwise = 35 * h * p + h * 7 * chunk * p * _padding(seq_len, chunk)
    return scan, elementwise


_SPLIT_FLOPS: dict[type, Callable[[nn.Module, int], tuple[float, float]]] = {
    Mamba: _mamba,
    RGLRUBlock: _rglru,
    H3: _h3,
    RWKV6TimeMix: _rwkv6_time,
    RWKV6ChannelMix: _rwkv_channel,
    RWKV7TimeMix: _rwkv7_time,
}

MIXING_FLOPS: dict[type, Callable[[nn.Module, int], float]] = {
    Attention: _attention_flops,
    **{cls: (lambda block, seq_len, f=f: sum(f(block, seq_len))) for cls, f in _SPLIT_FLOPS.items()},
}
ELEMENTWISE_FLOPS: dict[type, Callable[[nn.Module, int], float]] = {
    cls: (lambda block, seq_len, f=f: f(block, seq_len)[1]) for cls, f in _SPLIT_FLOPS.items()
}


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
