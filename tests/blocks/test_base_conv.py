"""Zoology's BaseConv: y = conv(x) * (W x + b) + x with a short or a long convolution chosen per layer;
the long conv is Zoology's (k * x + x, explicit or implicit filter); every variant is causal, decodes
like its forward with an honest state, and its FLOP count matches what FlopCounterMode sees."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arch.blocks.base_conv import ZoologyBaseConv, implicit_filter_positions
from arch.flops import ELEMENTWISE_FLOPS, forward_flops_per_token
from arch.lm import LanguageModel
from arch.ops.short_conv import causal_conv1d_naive
from tests.blocks.test_contract import build
from tests.helpers.properties import assert_causal, assert_decode_matches_forward
from training.compose import compose

D = 32


def block(layer_idx: int, **hp) -> ZoologyBaseConv:
    torch.manual_seed(0)
    module = ZoologyBaseConv(D, layer_idx, **{"kernel_size": [3, -1], "l_max": 64, **hp}).double()
    for p in module.parameters():  # the LM's init zeroes biases: perturb so every term shows
        p.data.add_(0.05 * torch.randn_like(p))
    return module.eval()


def direct_long_conv(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """sum_{j <= t} k[:, j] x_{t-j}, term by term."""
    T = x.shape[1]
    return torch.stack([sum(taps[:, j] * x[:, t - j] for j in range(t + 1)) for t in range(T)], dim=1)


def test_kernel_size_list_gives_each_layer_its_conv_cycling():
    kinds = [ZoologyBaseConv(D, i, kernel_size=[3, -1], l_max=16).kernel_size for i in range(4)]
    assert kinds == [3, -1, 3, -1]
    assert ZoologyBaseConv(D, 5, kernel_size=4).kernel_size == 4
    with pytest.raises(ValueError, match="kernel_size"):
        ZoologyBaseConv(D, 0, kernel_size=0)
    with pytest.raises(ValueError, match="filter"):
        ZoologyBaseConv(D, 1, kernel_size=-1, filter="hyena")


def test_short_layer_is_a_conv_gated_by_a_projection_plus_the_input():
    layer = block(0)
    x = torch.randn(2, 11, D, dtype=torch.float64)
    conv, _ = causal_conv1d_naive(x, layer.conv_weight, layer.conv_bias)
    torch.testing.assert_close(layer(x), conv * layer.projection(x) + x, rtol=1e-10, atol=1e-10)
    assert layer.projection.in_features == layer.projection.out_features == D and layer.projection.bias is not None


@pytest.mark.parametrize("filter", ["explicit", "implicit"])
def test_long_layer_is_zoologys_fft_conv_with_its_skip_gated_by_a_projection_plus_the_input(filter):
    layer = block(1, filter=filter)
    x = torch.randn(2, 13, D, dtype=torch.float64)
    taps = layer.filter_taps(13)
    assert taps.shape == (D, 13)
    conv = direct_long_conv(x, taps) + x
    torch.testing.assert_close(layer(x), conv * layer.projection(x) + x, rtol=1e-10, atol=1e-10)


def test_explicit_filter_is_randn_over_l_max_taps():
    torch.manual_seed(0)
    layer = ZoologyBaseConv(256, 1, kernel_size=-1, l_max=512, filter="explicit")
    assert layer.long_filter.shape == (256, 512)
    assert abs(layer.long_filter.std().item() - 1) < 0.01 and abs(layer.long_filter.mean().item()) < 0.01


def test_implicit_filter_is_an_mlp_of_zoologys_positional_features():
    z = implicit_filter_positions(8, 3)
    w = 2 * math.pi * torch.arange(8) / 8
    torch.testing.assert_close(z[:, 0], torch.linspace(0, 1, 8))
    torch.testing.assert_close(z[:, 1], torch.cos(1e-4 * w))
    torch.testing.assert_close(z[:, 2], -torch.sin(1e-4 * w))
    assert implicit_filter_positions(8, 7).shape == (8, 7)
    layer = block(1, filter="implicit", d_hidden=8)
    assert [type(m).__name__ for m in layer.filter_mlp] == ["Linear", "ReLU", "Linear"]
    assert layer.filter_mlp[0].in_features == 3 and layer.filter_mlp[-1].out_features == D
    with pytest.raises(ValueError, match="d_emb"):
        ZoologyBaseConv(D, 1, kernel_size=-1, d_emb=4)


@pytest.mark.parametrize(("layer_idx", "filter"), [(0, "implicit"), (1, "implicit"), (1, "explicit")])
def test_each_variant_is_causal_and_decodes_like_its_forward(layer_idx, filter):
    layer = block(layer_idx, filter=filter)
    assert_causal(layer, D)
    assert_decode_matches_forward(layer, D)


def test_long_conv_decodes_past_l_max_keeping_l_max_minus_one_inputs():
    layer = block(1, filter="explicit", l_max=10)
    assert_decode_matches_forward(layer, D, T=24)  # 24 > l_max: the state stops growing at 9 inputs
    assert layer.state_size(5) == 5 * D and layer.state_size(10_000) == 9 * D
    assert block(0).state_size(10_000) == 2 * D


def test_block_config_builds_the_long_layer_at_odd_indices():
    assert build("zoology_base_conv", layer_idx=0).kernel_size == 3
    assert build("zoology_base_conv", layer_idx=1).kernel_size == -1


def test_no_parameter_is_exempt_from_weight_decay_as_in_zoology():
    for layer in (block(0), block(1, filter="explicit"), block(1, filter="implicit")):
        assert not any(getattr(p, "_no_weight_decay", False) for p in layer.parameters())


def test_language_model_initialises_projection_and_filter_mlp_as_zoology():
    cfg = compose(["model=base_conv", "model.d_model=64", "model.n_layers=2"])
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model = LanguageModel.from_config(OmegaConf.to_container(cfg, resolve=True)["model"], vocab_size=100)
    short, long = (layer.mixer for layer in model.layers)
    assert (short.kernel_size, long.kernel_size, long.filter) == (3, -1, "implicit")
    for linear in (short.projection, long.projection, long.filter_mlp[0], long.filter_mlp[2]):
        assert abs(linear.weight.std().item() - 0.02) < 0.005 and not linear.bias.any()
    assert abs(short.conv_weight.abs().max().item()) <= 1 / math.sqrt(3)


@pytest.mark.parametrize(("layer_idx", "filter"), [(0, "implicit"), (1, "implicit"), (1, "explicit")])
@pytest.mark.parametrize("seq_len", [64, 100])
def test_visible_flops_match_the_counter_for_one_sequence(layer_idx, filter, seq_len):
    """FFTs and the filter's work are counted per sequence, as for a batch of one: what FlopCounterMode
    sees then equals the matmul-like part; the FFTs (invisible to it) are in the elementwise part."""
    layer = ZoologyBaseConv(64, layer_idx, kernel_size=[3, -1], l_max=256, filter=filter, backend="torch")
    elementwise = ELEMENTWISE_FLOPS[ZoologyBaseConv](layer, seq_len)
    visible = (forward_flops_per_token(layer, seq_len) - elementwise) * seq_len
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(1, seq_len, 64))
    assert visible == pytest.approx(counter.get_total_flops(), rel=0.01)
    assert elementwise > 0
    if layer_idx == 1:  # the FFTs: O(log T) per token and channel
        assert ELEMENTWISE_FLOPS[ZoologyBaseConv](layer, 4 * seq_len) > elementwise
