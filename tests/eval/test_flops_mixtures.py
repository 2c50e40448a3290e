"""arch.flops for the mixtures: an MoE counts its top-k experts (what FlopCounterMode sees on the dropless
forward), MoA its selected heads, MoH and MLA their attention; active parameters leave out the experts
a token is not routed to."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from arch.blocks.attention import Attention
from arch.blocks.mla import MLA
from arch.blocks.moa import MoA
from arch.blocks.moe import MoE
from arch.blocks.moh import MoH
from arch.flops import _mean_context, active_params
from tests.eval.test_flops_zoo2 import D, assert_block_flops_visible


@pytest.mark.parametrize(
    "make",
    [
        lambda: MoE(D, n_experts=8, top_k=2),
        lambda: MoE(D, n_experts=4, top_k=1, granularity=2, n_shared=1),
        lambda: MoE(D, n_experts=8, top_k=2, router="attention"),
    ],
    ids=["top2", "fine_shared", "attention_router"],
)
def test_moe_flops_are_the_top_k_experts(make, monkeypatch):
    # FlopCounterMode has no formula for torch._grouped_mm: count the per-expert matmuls it stands for
    monkeypatch.setattr("arch.blocks.moe.grouped_mm_supported", lambda x, w: False)
    assert_block_flops_visible(make, 64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MoA(D, n_experts=4, top_k=2, expert_heads=2, head_dim=8, n_kv_heads=2),
        lambda: MoA(D, n_experts=4, top_k=2, head_dim=8, kv="separate"),
        lambda: MoH(D, n_heads=4, n_shared=1, top_k=2),
        lambda: MLA(D, n_heads=4, head_dim=16, kv_rank=32, rope_dim=8, q_rank=24),
        lambda: Attention(D, n_heads=2, score="differential"),
        lambda: Attention(D, n_heads=4, score="sigmoid"),
        lambda: Attention(D, n_heads=4, position="cope", cope_positions=32),
        lambda: Attention(D, n_heads=4, n_kv_heads=2, forget_gate=True, output_gate=True, qk_norm=True, kv_shift=True),
        lambda: Attention(D, n_heads=4, sink="learnable", temperature="query_position", rope_fraction=0.5),
        lambda: Attention(D, n_heads=4, n_kv_heads=2, selective=True),
        lambda: Attention(D, n_heads=4, selective=True, selective_budget=16),
        lambda: Attention(D, n_heads=4, mta_kernel=[3, 5], mta_head_mix=True),
        lambda: Attention(D, n_heads=4, qkv_conv=4),
    ],
    ids=[
        "moa_shared", "moa_separate", "moh", "mla", "differential", "sigmoid", "cope", "gated_options",
        "sink_query_temperature", "selective", "selective_budget", "mta", "qkv_conv",
    ],
)
def test_attention_mixture_flops_match_the_counter(make):
    from arch.flops import MIXING_FLOPS, forward_flops_per_token

    torch.manual_seed(0)
    block, b, t = make(), 2, 64
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        block(torch.randn(b, t, D))
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # the counter charges attention's full T x T scores; arch.flops counts the causal half
    # convolutions (MTA over the whole score map, qkv_conv over time) are charged in full by both
    expected = ops["aten.mm"] + ops.get("aten.bmm", 0) * _mean_context(t, None) / t + ops.get("aten.convolution", 0)
    assert forward_flops_per_token(block, t) * b * t == pytest.approx(expected, rel=0.1)
    assert MIXING_FLOPS[type(block)](block, t) > 0


def test_active_params_leave_out_unrouted_experts():
    moe = MoE(D, n_experts=8, top_k=2, hidden=96)
    total = sum(p.numel() for p in moe.parameters())
    assert active_params(moe) == total - 6 * 3 * D * 96
    moa = MoA(D, n_experts=4, top_k=1, head_dim=8)
    assert active_params(moa) == sum(p.numel() for p in moa.parameters()) - 3 * 2 * 8 * D
