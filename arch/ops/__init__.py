"""Functional sequence-mixing ops on [B, T, H, D] tensors, one module per op family: a fast
pure-PyTorch path, a token-by-token ``*_naive`` reference beside it, and a fused-kernel dispatch when
one is importable (see `arch.ops.backend`). Import ops from here: ``from arch.ops import rwkv7``.

    gla               gated_linear_attention, gated_linear_attention_naive, gla_step (one decode token)
    linear_attention  linear_attention, linear_attention_naive, taylor_feature_map
    long_conv         long_conv (FFT), long_conv_naive, long_conv_step (one decode token)
    rwkv6             rwkv6, rwkv6_naive
    rwkv7             rwkv7, rwkv7_naive
    scan              diagonal_recurrence, diagonal_recurrence_naive, selective_scan, selective_scan_naive
    short_conv        causal_conv1d, causal_conv1d_naive
    attention         causal_attention (softmax; PyTorch SDPA is its reference)
    rope              rotary_embedding
"""

from arch.ops.attention import causal_attention
from arch.ops.cross_entropy import linear_cross_entropy
from arch.ops.gla import gated_linear_attention, gated_linear_attention_naive, gla_step
from arch.ops.linear_attention import linear_attention, linear_attention_naive, taylor_feature_map
from arch.ops.long_conv import long_conv, long_conv_naive, long_conv_step
from arch.ops.rope import rotary_embedding
from arch.ops.rwkv6 import rwkv6, rwkv6_naive
from arch.ops.rwkv7 import rwkv7, rwkv7_naive
from arch.ops.scan import diagonal_recurrence, diagonal_recurrence_naive, selective_scan, selective_scan_naive
from arch.ops.short_conv import causal_conv1d, causal_conv1d_naive

__all__ = [
    "causal_attention",
    "causal_conv1d",
    "causal_conv1d_naive",
    "diagonal_recurrence",
    "diagonal_recurrence_naive",
    "gated_linear_attention",
    "gated_linear_attention_naive",
    "gla_step",
    "linear_cross_entropy",
    "linear_attention",
    "linear_attention_naive",
    "long_conv",
    "long_conv_naive",
    "long_conv_step",
    "rotary_embedding",
    "rwkv6",
    "rwkv6_naive",
    "rwkv7",
    "rwkv7_naive",
    "selective_scan",
    "selective_scan_naive",
    "taylor_feature_map",
]
