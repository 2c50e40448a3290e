"""arch.flops (the FLOP counter) for the gated-linear-attention zoo (linear attention, BaseConv, GLA, RetNet, HGRN2,
Mamba-2): the matmul-like part of each block's count is what FlopCounterMode sees on the pure-PyTorch
forward (within 10%); the elementwise part, invisible to the counter, is `ELEMENTWISE_FLOPS`."""

import pytest

from arch.blocks.base_conv import BaseConv
from arch.blocks.gla import GLA
from arch.blocks.hgrn2 import HGRN2
from arch.blocks.linear_attention import LinearAttention
from arch.blocks.mamba2 import Mamba2
from arch.blocks.retnet import RetNet
from arch.flops import _chunked_scan
from tests.eval.test_flops_zoo2 import assert_block_flops_visible, assert_model_flops_visible

D = 64
BLOCKS = {
    "linear_attention_taylor": lambda: LinearAttention(D, n_heads=4, feature_dim=8, backend="torch"),
    "linear_attention_elu": lambda: LinearAttention(D, n_heads=4, feature_dim=16, feature_map="elu", normalize=False, backend="torch"),
    "base_conv": lambda: BaseConv(D, backend="torch"),
    "gla": lambda: GLA(D, backend="torch"),
    "retnet": lambda: RetNet(D, backend="torch"),
    "hgrn2": lambda: HGRN2(D, backend="torch"),
    "hgrn2_no_gate": lambda: HGRN2(D, output_gate=False, lower_bound=0.3, backend="torch"),
    "mamba2": lambda: Mamba2(D, d_state=16, head_dim=16, backend="torch"),
}


@pytest.mark.parametrize("seq_len", [64, 100, 200])  # 100: padded to whole chunks; 200: several chunks
@pytest.mark.parametrize("name", BLOCKS)
def test_visible_block_flops_match_the_counter(name, seq_len):
    assert_block_flops_visible(BLOCKS[name], seq_len)


@pytest.mark.parametrize("layers", [["gla", "retnet"], ["hgrn2", "mamba2"], ["base_conv", "linear_attention"]])
def test_visible_model_flops_match_the_counter(layers):
    targets = {
        "gla": {"_target_": "arch.blocks.gla.GLA", "backend": "torch"},
        "retnet": {"_target_": "arch.blocks.retnet.RetNet", "backend": "torch"},
        "hgrn2": {"_target_": "arch.blocks.hgrn2.HGRN2", "backend": "torch"},
        "mamba2": {"_target_": "arch.blocks.mamba2.Mamba2", "head_dim": 16, "backend": "torch"},
        "base_conv": {"_target_": "arch.blocks.base_conv.BaseConv", "backend": "torch"},
        "linear_attention": {"_target_": "arch.blocks.linear_attention.LinearAttention", "n_heads": 4, "backend": "torch"},
        "swiglu": {"_target_": "arch.blocks.mlp.SwiGLU"},
    }
    assert_model_flops_visible(layers, targets)


def test_chunked_scan_cost_is_linear_in_length_and_about_4Cd_plus_4d2_over_h():
    # Shen et al. 2024: chunked linear attention costs ~ 4 C d + 4 d^2 / h per token (chunk C)
    h, p, C = 4, 32, 64
    matmul, _ = _chunked_scan(h, p, p, 4096, C, "scalar")
    assert matmul == _chunked_scan(h, p, p, 65536, C, "scalar")[0]  # constant per token
    d = h * p
    assert matmul == pytest.approx(4 * C * d + 4 * d * d / h, rel=0.5)
