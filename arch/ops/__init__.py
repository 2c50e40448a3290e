"""Functional sequence-mixing ops on [B, T, H, D] tensors: a fast pure-PyTorch path, a token-by-token
``*_naive`` reference, and a fused-kernel dispatch when one is importable (see `arch.ops.backend`)."""

from arch.ops.gla import gated_linear_attention
from arch.ops.gla import gated_linear_attention_naive
from arch.ops.linear_attention import linear_attention
from arch.ops.linear_attention import linear_attention_naive
from arch.ops.linear_attention import taylor_feature_map
from arch.ops.rwkv6 import rwkv6
from arch.ops.rwkv6 import rwkv6_naive
from arch.ops.short_conv import causal_conv1d
from arch.ops.short_conv import causal_conv1d_naive
