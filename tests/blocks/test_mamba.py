import math

import torch
import torch.nn.functional as F

from arch.blocks.mamba import Mamba
from arch.ops import causal_conv1d_naive, selective_scan_naive
from tests.helpers.properties import assert_decode_matches_forward

D = 32


def test_mamba_dt_bias_gives_softplus_dt_in_log_uniform_range():
    torch.manual_seed(0)
    block = Mamba(D, d_state=8, dt_min=1e-3, dt_max=1e-1)
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # log-uniform: the median of log dt sits near the middle of [log 1e-3, log 1e-1]
    assert abs(dt.log().median().item() - math.log(1e-2)) < 0.6


def test_mamba_init_in_a_language_model_follows_mamba_ssm_by_default_and_zoology_on_request():
    from arch.lm import LanguageModel

    def lm(init):
        torch.manual_seed(0)
        return LanguageModel.from_config(
            {"d_model": 128, "n_layers": 2, "layers": ["mamba"], "mlp": None, "vocab_size": 64, "init_std": 0.02,
             "blocks": {"mamba": {"_target_": "arch.blocks.mamba.Mamba", "init": init}}}
        )

    ref, zoo = lm("mamba_ssm").layers[0].mixer, lm("zoology").layers[0].mixer
    # mamba_ssm: PyTorch's default Linear init, U(+-1/sqrt(fan_in)) (std 1/sqrt(3 fan_in)), dt bias for dt in [1e-3, 0.1]
    assert abs(ref.in_proj.weight.std().item() - (3 * 128) ** -0.5) < 2e-3
    assert F.softplus(ref.dt_proj.bias).max() <= 0.1 * (1 + 1e-5)
    # zoology: every Linear N(0, init_std), every bias zero, so delta starts at softplus(0 + small) ~ 0.69
    for linear in (zoo.in_proj, zoo.x_proj, zoo.dt_proj):
        assert abs(linear.weight.std().item() - 0.02) < 2e-3
    assert torch.count_nonzero(zoo.dt_proj.bias) == 0
    torch.testing.assert_close(zoo.A_log, ref.A_log)
    torch.testing.assert_close(zoo.D, ref.D)


def test_mamba_A_is_s4d_real_and_dt_rank_auto_is_ceil_d_over_16():
    block = Mamba(40, d_state=4)
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1.0, 5.0).expand(80, 4))
    assert block.dt_rank == 3 and block.d_inner == 80


def test_mamba_forward_equals_hand_written_composition_of_the_naive_ops():
    torch.manual_seed(0)
    block = Mamba(D, d_state=8).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    xi, z = block.in_proj(x).chunk(2, dim=-1)
    u, _ = causal_conv1d_naive(xi, block.conv_weight, block.conv_bias, activation="silu")
    dt, B, C = block.x_proj(u).split([block.dt_rank, 8, 8], dim=-1)
    y, _ = selective_scan_naive(u, F.softplus(block.dt_proj(dt)), -torch.exp(block.A_log), B, C, block.D, z)
    torch.testing.assert_close(block(x), block.out_proj(y), rtol=1e-10, atol=1e-10)


def test_mamba_decode_state_is_conv_window_minus_one_plus_ssm():
    block = Mamba(D, d_state=8, d_conv=3, expand=1).double()
    assert block.state_size(100) == D * (2 + 8)
    assert_decode_matches_forward(block, D, T=7)
