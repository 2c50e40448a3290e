"""HGRN2: input gate k = 1 - f with f >= the lower bound, q = swish(.), and the block equals a
hand-written composition on the token-by-token GLA oracle."""

import pytest
import torch
import torch.nn.functional as F

from arch.blocks.hgrn2 import HGRN2
from arch.ops.gla import gated_linear_attention_naive
from tests.helpers.properties import assert_decode_matches_forward

D = 32


@pytest.mark.parametrize("lower_bound", [0.0, 0.4])
def test_hgrn2_input_gate_is_one_minus_forget_gate_above_the_lower_bound(lower_bound):
    torch.manual_seed(0)
    block = HGRN2(D, lower_bound=lower_bound).double()
    x = 4 * torch.randn(2, 30, D, dtype=torch.float64)
    log_f, k = block.gates(x)
    f = log_f.exp()
    torch.testing.assert_close(k, 1 - f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, lower_bound + (1 - lower_bound) * torch.sigmoid(block.f_proj(x)).unflatten(-1, (4, 16)))
    assert (f >= lower_bound).all() and (f < 1).all()


def test_hgrn2_lower_bound_grows_with_depth_when_given_the_model_depth():
    assert [HGRN2(D, layer_idx=i, n_layers=4).lower_bound for i in range(4)] == [0.0, 0.25, 0.5, 0.75]
    assert HGRN2(D, layer_idx=3, lower_bound=0.1).lower_bound == 0.1
    with pytest.raises(ValueError):
        HGRN2(D, lower_bound=1.0)


@pytest.mark.parametrize("output_gate", [True, False])
def test_hgrn2_equals_gla_with_tied_gates_and_swish_query(output_gate):
    torch.manual_seed(0)
    block = HGRN2(D, layer_idx=2, n_layers=4, output_gate=output_gate).double()
    x = torch.randn(2, 70, D, dtype=torch.float64)
    q = F.silu(block.q_proj(x)).unflatten(-1, (4, 16))
    f = 0.5 + 0.5 * torch.sigmoid(block.f_proj(x)).unflatten(-1, (4, 16))
    v = block.i_proj(x).unflatten(-1, (4, 8))
    o, _ = gated_linear_attention_naive(q, 1 - f, v, f.log(), scale=16**-0.5)
    o = block.norm(o.flatten(2))
    if output_gate:
        o = o * F.silu(block.g_proj(x))
    torch.testing.assert_close(block(x), block.out_proj(o), rtol=1e-9, atol=1e-9)
    assert_decode_matches_forward(block, D, T=9)


def test_hgrn2_in_a_model_gets_the_model_depth():
    from arch.lm import LanguageModel

    blocks = {"hgrn2": {"_target_": "arch.blocks.hgrn2.HGRN2", "n_heads": 4, "expand_ratio": 16}}
    model = LanguageModel.from_config(dict(d_model=D, n_layers=4, vocab_size=40, layers=["hgrn2"], mlp=None, blocks=blocks))
    assert [layer.mixer.lower_bound for layer in model.layers] == [0.0, 0.25, 0.5, 0.75]
    fixed = {"hgrn2": {**blocks["hgrn2"], "lower_bound": 0.1}}
    model = LanguageModel.from_config(dict(d_model=D, n_layers=4, vocab_size=40, layers=["hgrn2"], mlp=None, blocks=fixed))
    assert {layer.mixer.lower_bound for layer in model.layers} == {0.1}
