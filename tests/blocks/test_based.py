"""Based: BaseConv equals its hand-written composition; the preset has BaseConv, Taylor linear
attention and sliding-window attention at the 360M layout's positions (scaled down), and decodes."""


import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from arch.blocks.attention import Attention
from arch.blocks.base_conv import BaseConv
from arch.blocks.linear_attention import LinearAttention
from arch.lm import LanguageModel
from arch.ops.short_conv import causal_conv1d_naive
from tests.helpers.properties import assert_decode_matches_forward, assert_model_decode_matches_forward
from training.compose import compose

D = 32


def preset(name: str, *overrides: str) -> dict:
    cfg = compose([f"model={name}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)["model"]


def test_base_conv_is_a_conv_branch_gated_by_a_linear_branch():
    torch.manual_seed(0)
    block = BaseConv(D).double()
    assert block.in_proj.out_features == 4 * D and block.out_proj.in_features == 2 * D  # d -> 4d, split in two
    x = torch.randn(2, 11, D, dtype=torch.float64)
    u, g = block.in_proj(x).chunk(2, dim=-1)
    conv, _ = causal_conv1d_naive(u, block.conv_weight, block.conv_bias)
    torch.testing.assert_close(block(x), block.out_proj(F.silu(conv) * g), rtol=1e-10, atol=1e-10)
    assert block.state_size(1000) == 2 * D * 2  # the last k - 1 = 2 inputs of the 2d conv channels
    assert_decode_matches_forward(block, D, T=7)


def test_based_preset_layout_has_the_three_kinds_at_the_expected_indices():
    model = LanguageModel.from_config(preset("based"), vocab_size=64)
    kinds = [type(layer.mixer) for layer in model.layers]
    # the 360M layout's period of 5: linear attention at 1 (mod 5), window attention at 2 (mod 5)
    assert [i for i, k in enumerate(kinds) if k is LinearAttention] == [1, 6]
    assert [i for i, k in enumerate(kinds) if k is Attention] == [2, 7]
    assert [i for i, k in enumerate(kinds) if k is BaseConv] == [0, 3, 4, 5]
    la, swa, conv = model.layers[1].mixer, model.layers[2].mixer, model.layers[0].mixer
    assert la.feature_map == "taylor" and la.feature_dim == 16 and la.normalize and la.feature_size == 273
    assert swa.window == 64 and conv.kernel_size == 3
    assert all(layer.mlp is not None for layer in model.layers)  # SwiGLU after every mixer
    # the state stays bounded: only the window grows, up to its size
    assert model.state_size(4096) == model.state_size(64)


def test_based_preset_decodes_token_by_token_like_its_forward():
    torch.manual_seed(0)
    model = LanguageModel.from_config(preset("based", "model.d_model=64", "model.n_layers=5"), vocab_size=50).double().eval()
    ids = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        assert_model_decode_matches_forward(model, ids, rtol=1e-8, atol=1e-8)
