"""The one FLOP counter: forward FLOPs per token of a model at sequence length T.

Counted from what the pure-PyTorch path computes: every ``nn.Linear`` (2 * in * out per token,
the output head included), plus the sequence-mixing work that no Linear shows (attention's QK and
AV products, averaged over causal positions; scans, convolutions, gates). Training costs 3x the
forward (backward = 2x). `train.py` logs ``train/flops`` from this count and MFU is measured against it;
``python -m eval.flops`` prints it per layer (`layer_table`).

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
from arch.blocks.base_conv import BaseConv, ZoologyBaseConv
from arch.blocks.gla import GLA
from arch.blocks.griffin import RGLRUBlock
from arch.blocks.h3 import H3
from arch.blocks.hgrn2 import HGRN2
from arch.blocks.linear_attention import LinearAttention
from arch.blocks.mamba import Mamba
from arch.blocks.mamba2 import Mamba2
from arch.blocks.mla import MLA
from arch.blocks.moa import MoA
from arch.blocks.moe import MoE
from arch.blocks.moh import MoH
from arch.blocks.retnet import RetNet
from arch.blocks.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix
from arch.blocks.rwkv7 import RWKV7TimeMix
from arch.ops import diagonal_recurrence, rwkv6, rwkv7
from arch.ops.gla import _block_sizes, _chunk
from arch.ops.long_conv import _fft_length


def _mean_context(seq_len: int, window: int | None) -> float:
    """Average number of keys a causal query sees over positions 1..T (each capped at the window)."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def _attention_flops(block: Attention, seq_len: int) -> float:
    # q.k and p.v: 2 multiply-adds each per (head, head dim, visible key); a differential head has two
    # q.k maps and applies both to a value twice as wide: 2 maps x (Dh + 2 Dh)
    # CoPE adds every query's dot product with its position table, 2 Dh npos per head
    maps, table = block.maps, block.cope_table
    cope = 0 if table is None else 2 * block.n_heads * table.numel()
    # multi-token attention convolves and mixes the whole [T, T] score map it computes: per query and
    # head, 2 c_q c_k per key for the convolution, 2 H per key for the head mixing
    kernel, mix = block.mta_kernel, block.mta_head_mix
    mta = (0 if kernel is None else 2 * kernel.numel() * seq_len) + (0 if mix is None else 2 * mix.numel() * seq_len)
    return 2 * maps * (1 + maps) * block.n_heads * block.head_dim * _mean_context(seq_len, block.window) + cope + mta


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
    channels, modes, h = block.channels, block.modes, block.n_heads
    # matmul-like: the shift SSM's K-tap conv 2 K d_model (D_s folded into its current tap); q times y
    # per head 2 H P^2.
    # elementwise, per channel and complex mode (the state is N/2 complex = N real numbers): the scan on
    # (re, im) visits each real state twice, tokens padded to whole chunks, 4 ops a visit (log a times
    # log2 e, exp2, decay multiply, input add): 16; the input B̄ e^{-iθt} u 2 (complex times real) and the
    # readout 2 Re(C e^{iθt} g) 4 (2 multiplies, 2 adds): 6. (One complex multiply-add s = Ā s + B̄ u is
    # 4 real multiplies + 4 adds; the rotating frame trades it for a real decay on both parts.)
    # Per channel: k v^T 1, D skip 2. Per head, mode and token, shared by the P^2 channels of a head and
    # by the batch: the phase θt and its reduction 2, cos and sin 2, B̄ e^{-iθt} and C e^{iθt} as complex
    # multiplies 12, the factor 2 2: 18. Ā, B̄ and the shift taps are formed once per forward, not per token.
    matmul = 2 * block.shift_len * block.d_model + 2 * channels
    scan = 16 * channels * modes * _padding(seq_len, min(_default_chunk(diagonal_recurrence), seq_len))
    return matmul, scan + 6 * channels * modes + 3 * channels + 18 * h * modes


def _chunked_scan(
    n_heads: int, dk: int, dv: int, seq_len: int, chunk_size: int, decay: str, bonus: bool = False
) -> tuple[float, float]:
    """(matmul-like, elementwise) FLOPs per token of `arch.ops.gla.chunked_gated_scan`, the one chunked
    core of GLA, RetNet, HGRN2, Mamba-2/SSD, linear attention and RWKV-6; ``decay`` is "none",
    "scalar" (one per head) or "vector" (per key dim), ``bonus`` RWKV-6's current-token term.

    Per head and (padded) token: matmul-like, the chunk's state update (k e^(G_last - G))^T v and the
    read of the entering state (q e^G) h, 2 x 2 Dk Dv, and at every nesting level (outer -> inner)
    the sub-block scores q k^T and their values A v, 2 outer (Dk + Dv). Elementwise, with Dg the
    decay's width: cumsum and the chunk factors 4 Dg + 2 Dk; per level the rescaled queries 2 Dg + Dk,
    the key factors 3 Dg per earlier sub-block (r = outer / inner of them) applied to k (r Dk) or to
    the scores (outer), and adding into o Dv; the current token 2 Dk + 2 Dv (+ Dk bonus), the scale Dv,
    and the carried state 2 Dk Dv once per chunk. Without a decay the op takes one causal-masked
    q k^T per chunk instead of the levels: matmul-like 2 C (Dk + Dv) on top of the state's 4 Dk Dv;
    elementwise the cumsum 1, the mask C, adding into o and the scale 2 Dv, the state Dk Dv per chunk.
    """
    chunk = _chunk(chunk_size, seq_len)  # as the op: a short input is not padded to C
    pad = _padding(seq_len, chunk)
    if decay == "none" and not bonus:
        matmul = 4 * dk * dv + 2 * chunk * (dk + dv)
        elementwise = 1 + chunk + 2 * dv + dk * dv / chunk
        return n_heads * matmul * pad, n_heads * elementwise * pad
    sizes = _block_sizes(chunk)
    levels = list(zip(sizes[:-1], sizes[1:]))
    dg = {"none": 1, "scalar": 1, "vector": dk}[decay]
    matmul = 4 * dk * dv + sum(2 * outer * (dk + dv) for outer, _ in levels)
    elementwise = 4 * dg + 2 * dk + 2 * dk + 3 * dv + 2 * dk * dv / chunk + (dk if bonus else 0)
    for outer, inner in levels:
        r = outer // inner
        elementwise += 2 * dg + dk + 3 * r * dg + (r * dk if decay == "vector" else outer) + dv
    return n_heads * matmul * pad, n_heads * elementwise * pad


def _rwkv6_time(block: RWKV6TimeMix, seq_len: int) -> tuple[float, float]:
    h, p = block.n_heads, block.head_dim
    d, n_mixed, rank = h * p, *block.mix_up.shape[:2]
    scan, scan_elementwise = _chunked_scan(h, p, p, seq_len, _default_chunk(rwkv6), "vector", bonus=True)
    # elementwise: token shift and ddlerp 13 d + 5 tanh(rank) + log-decay 2 d, the scan, silu gate 3 d.
    elementwise = 18 * d + n_mixed * rank + scan_elementwise
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


_FEATURE_MAP_FLOPS = {  # elementwise FLOPs of a feature map per input element of dimension f
    "taylor": lambda f: 2 * f + 1,  # outer product and its scale (2 f^2 per vector), x / d^(1/4)
    "elu": lambda f: 3,
    "relu": lambda f: 1,
    "identity": lambda f: 0,
}


def _linear_attention(block: LinearAttention, seq_len: int) -> tuple[float, float]:
    h, f, dv = block.n_heads, block.feature_dim, block.head_dim
    # the scan runs on v with a column of ones appended (numerator and normaliser in one pass)
    scan, scan_elementwise = _chunked_scan(h, block.feature_size, dv + 1, seq_len, block.chunk_size, "none")
    # elementwise: feature maps of q and k, the division by the normaliser (+ eps)
    maps = 2 * h * f * _FEATURE_MAP_FLOPS[block.feature_map](f)
    return scan, scan_elementwise + maps + (2 * h * dv if block.normalize else 0)


def _base_conv(block: BaseConv, seq_len: int) -> tuple[float, float]:
    d = block.d_inner
    # matmul-like: depthwise conv 2 K d_inner; elementwise: conv bias 1, silu 2, gate 1
    return 2 * block.kernel_size * d, 4 * d


def _zoology_base_conv(block: ZoologyBaseConv, seq_len: int) -> tuple[float, float]:
    d = block.d_model
    if block.kernel_size > 0:
        # matmul-like: depthwise conv 2 K d; elementwise: conv bias 1, gate 1, residual 1
        return 2 * block.kernel_size * d, 3 * d
    # The long conv by FFT, counted per sequence (a batch of one: the filter and its transform are
    # shared by a batch) and divided by T. FFTs are invisible to FlopCounterMode, so they sit in the
    # elementwise part: ~2.5 n log2 n real FLOPs per real transform of n points (half of a complex
    # radix-2 FFT's 5 n log2 n), three transforms per channel (inputs, filter, inverse), and 6 per
    # complex product of the n/2 + 1 bins. The implicit filter's Linears are counted per token by
    # the Linear rule (T positions per sequence); its ReLU d_hidden per position. Then the skip,
    # the gate and the residual, 1 each per channel.
    n = _fft_length(seq_len + min(seq_len, block.l_max) - 1)
    per_sequence = d * (3 * 2.5 * n * math.log2(n) + 6 * (n // 2 + 1))
    return 0.0, per_sequence / seq_len + (block.d_hidden or 0) + 3 * d


def _gla(block: GLA, seq_len: int) -> tuple[float, float]:
    scan, scan_elementwise = _chunked_scan(block.n_heads, block.head_k, block.head_v, seq_len, block.chunk_size, "vector")
    # elementwise: logsigmoid and the normaliser 2 key_dim; silu output gate and product 3 value_dim
    return scan, scan_elementwise + 2 * block.key_dim + 3 * block.value_dim


def _retnet(block: RetNet, seq_len: int) -> tuple[float, float]:
    scan, scan_elementwise = _chunked_scan(block.n_heads, block.head_k, block.head_v, seq_len, block.chunk_size, "scalar")
    # elementwise: rotary on q and k 3 per element each; silu output gate and product 3 value_dim
    return scan, scan_elementwise + 6 * block.key_dim + 3 * block.value_dim


def _hgrn2(block: HGRN2, seq_len: int) -> tuple[float, float]:
    scan, scan_elementwise = _chunked_scan(block.n_heads, block.head_k, block.head_v, seq_len, block.chunk_size, "vector")
    # elementwise: swish q 2, forget gate (sigmoid, bound, log) and k = 1 - f 5 per key dim; output gate 3
    gate = 3 * block.value_dim if block.g_proj is not None else 0
    return scan, scan_elementwise + 7 * block.key_dim + gate


def _mamba2(block: Mamba2, seq_len: int) -> tuple[float, float]:
    h, d = block.n_heads, block.d_inner
    scan, scan_elementwise = _chunked_scan(h, block.d_state, block.head_dim, seq_len, block.chunk_size, "scalar")
    # matmul-like: depthwise conv over (x, B, C) 2 K conv_dim; elementwise: conv bias and silu 3 per
    # conv channel, dt bias, softplus and dt A 3 per head, v = dt x 1, D skip 2 and the silu(z) gate 3
    # per inner channel
    return 2 * block.d_conv * block.conv_dim + scan, scan_elementwise + 3 * block.conv_dim + 3 * h + 6 * d


def _moe(block: MoE, seq_len: int) -> tuple[float, float]:
    d, h, k, e = block.in_proj.in_features, block.hidden, block.top_k, block.n_experts
    # matmul-like: each of a token's top_k experts, in_proj 2 d 2h and out_proj 2 h d (the stacked
    # expert weights are not Linears; the router and the shared expert are); Yuan's attention router
    # adds A v over E x E, 2 E^2 (its q k^T outer product and row softmax, ~4 E^2, are elementwise).
    attention_router = block.router.kind == "attention"
    matmul = k * 6 * d * h + (2 * e * e if attention_router else 0)
    # elementwise: scores (softmax or sigmoid) ~3 E and the top-k sort ~E log2 E; per expert silu and
    # product 4 h, the weighting d and its scatter-add d.
    elementwise = 3 * e + e * math.log2(max(e, 2)) + k * (4 * h + 2 * d) + (4 * e * e if attention_router else 0)
    return matmul, elementwise


def _moa(block: MoA, seq_len: int) -> float:
    # the projections (every expert's) are Linears; attention runs for the selected experts' heads
    # (shared K/V) or for every expert's (separate K/V)
    heads = (block.top_k if block.kv == "shared" else block.n_experts) * block.heads
    return 4 * heads * block.head_dim * _mean_context(seq_len, None)


def _mla(block: MLA, seq_len: int) -> float:
    # q.k and p.v at the wider of the q.k width (nope + rope) and the value width: the narrower is zero-padded
    width = max(block.nope_dim + block.rope_dim, block.v_dim)
    return 4 * block.n_heads * width * _mean_context(seq_len, None)


_SPLIT_FLOPS: dict[type, Callable[[nn.Module, int], tuple[float, float]]] = {
    Mamba: _mamba,
    RGLRUBlock: _rglru,
    H3: _h3,
    RWKV6TimeMix: _rwkv6_time,
    RWKV6ChannelMix: _rwkv_channel,
    RWKV7TimeMix: _rwkv7_time,
    LinearAttention: _linear_attention,
    BaseConv: _base_conv,
    ZoologyBaseConv: _zoology_base_conv,
    GLA: _gla,
    RetNet: _retnet,
    HGRN2: _hgrn2,
    Mamba2: _mamba2,
    MoE: _moe,
}

MIXING_FLOPS: dict[type, Callable[[nn.Module, int], float]] = {
    Attention: _attention_flops,
    MoH: _attention_flops,  # every head is computed; the gates are per-head scalars
    MoA: _moa,
    MLA: _mla,
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


def active_params(model: nn.Module) -> int:
    """Parameters a token uses (shared tensors once): all of them, less what each mixture leaves out
    for a token (a block's ``inactive_params()``: the experts it is not routed to)."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return total - sum(m.inactive_params() for m in model.modules() if hasattr(m, "inactive_params"))


def training_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Forward + backward FLOPs per token (backward counted as twice the forward)."""
    return 3 * forward_flops_per_token(model, seq_len)


def layer_table(model: nn.Module, seq_len: int) -> str:
    """Markdown table: per layer its block, parameters, forward FLOPs/token and decode state at
    ``seq_len``; then the embedding/head and the totals (forward and training)."""
    rows = ["| layer | mixer | channel mixer | params | fwd FLOPs/token | state (numbers) |", "|---:|---|---|---:|---:|---:|"]
    for idx, layer in enumerate(model.layers):
        mlp = "-" if layer.mlp is None else type(layer.mlp).__name__
        params = sum(p.numel() for p in layer.parameters())
        state = layer.mixer.state_size(seq_len)
        flops = forward_flops_per_token(layer, seq_len)
        rows.append(f"| {idx} | {type(layer.mixer).__name__} | {mlp} | {params:,} | {flops:,.0f} | {state:,} |")
    rows.append(f"| head | - | - | {model.head.weight.numel():,} | {forward_flops_per_token(model.head, seq_len):,.0f} | - |")
    rows.append(
        f"| total | - | - | {model.num_params():,} | {forward_flops_per_token(model, seq_len):,.0f} | {model.state_size(seq_len):,} |"
    )
    active = active_params(model)
    note = f"\nActive parameters per token: {active:,} of {model.num_params():,}\n" if active != model.num_params() else ""
    return "\n".join(rows) + f"\n\nTraining FLOPs/token (forward + backward): {training_flops_per_token(model, seq_len):,.0f}\n" + note
