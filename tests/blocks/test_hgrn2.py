"""HGRN2: input gate k = 1 - f with f >= the lower bound, q = swish(.), the learned cross-layer lower
bounds of fla (softmax over layers, cumulative sum minus the first), and the block equals a
hand-written composition on the token-by-token GLA oracle."""

import pytest
import torch
import torch.nn.functional as F

from arch.blocks.hgrn2 import HGRN2, lower_bounds
from arch.ops.gla import gated_linear_attention_naive
from tests.helpers.properties import assert_decode_matches_forward, assert_model_decode_matches_forward

D = 32


def _model(n_layers: int = 4, **hp):
    from arch.lm import LanguageModel

    blocks = {"hgrn2": {"_target_": "arch.blocks.hgrn2.HGRN2", "n_heads": 4, "expand_ratio": 16, **hp}}
    return LanguageModel.from_config(dict(d_model=D, n_layers=n_layers, vocab_size=40, layers=["hgrn2"], mlp=None, blocks=blocks))


@pytest.mark.parametrize("lower_bound", [0.0, 0.4, "per channel"])
def test_hgrn2_input_gate_is_one_minus_forget_gate_above_the_lower_bound(lower_bound):
    torch.manual_seed(0)
    block = HGRN2(D).double()
    beta = torch.rand(64, dtype=torch.float64) * 0.9 if lower_bound == "per channel" else lower_bound
    x = 4 * torch.randn(2, 30, D, dtype=torch.float64)
    log_f, k = block.gates(x, beta)
    f = log_f.exp()
    beta = beta.view(4, 16) if lower_bound == "per channel" else beta
    torch.testing.assert_close(k, 1 - f, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, beta + (1 - beta) * torch.sigmoid(block.f_proj(x)).unflatten(-1, (4, 16)))
    assert (f >= beta).all() and (f < 1).all()


def test_hgrn2_lower_bounds_are_zero_at_layer_0_then_i_over_L_at_init_and_increase():
    L, K = 6, 5
    torch.testing.assert_close(lower_bounds(torch.zeros(L, K)), torch.tensor([[i / L] * K for i in range(L)]))
    torch.manual_seed(0)
    logits = 3 * torch.randn(L, K)
    p = torch.exp(logits) / torch.exp(logits).sum(0)  # the reference formula, written out
    expected = torch.stack([p[1 : i + 1].sum(0) for i in range(L)])
    bounds = lower_bounds(logits)
    torch.testing.assert_close(bounds, expected)
    assert (bounds[0] == 0).all() and (bounds.diff(dim=0) > 0).all() and (bounds < 1).all()


def test_hgrn2_in_a_model_learns_one_bound_table_held_by_layer_0():
    model = _model(n_layers=4)
    table = model.layers[0].mixer.lower_bound_logits
    assert table.shape == (4, 64) and not table.any()
    assert all(layer.mixer.lower_bound_logits is None for layer in model.layers[1:])
    shared = {}
    x = torch.randn(2, 7, D)
    for layer in model.layers:
        x = layer(x, shared)
    torch.testing.assert_close(shared["hgrn2_lower_bounds"], torch.tensor([[i / 4] * 64 for i in range(4)]))
    ids = torch.randint(0, 40, (2, 9))
    model(ids).square().sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0  # the bounds train
    assert getattr(table, "_no_weight_decay", False)
    assert {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)} == {"layers.0.mixer.lower_bound_logits"}


def test_hgrn2_layer_uses_its_row_of_the_table_as_fla_does():
    """Layer i's output equals the fla formula g = logaddexp(log lb_i, log1p(-lb_i) + logsigmoid(f)),
    k = 1 - exp(g), with lb = cumsum(softmax(Z)) - softmax(Z)_0, on the token-by-token GLA oracle."""
    torch.manual_seed(0)
    model = _model(n_layers=4).double()
    with torch.no_grad():
        model.layers[0].mixer.lower_bound_logits.normal_(std=2.0)
    p = model.layers[0].mixer.lower_bound_logits.detach().softmax(0)
    lb = (p.cumsum(0) - p[0])[2]
    block, x = model.layers[2].mixer, torch.randn(2, 40, D, dtype=torch.float64)
    g = torch.logaddexp(lb.log(), torch.log1p(-lb) + F.logsigmoid(block.f_proj(x))).unflatten(-1, (4, 16))
    q = F.silu(block.q_proj(x)).unflatten(-1, (4, 16))
    v = block.i_proj(x).unflatten(-1, (4, 8))
    o, _ = gated_linear_attention_naive(q, 1 - g.exp(), v, g, scale=16**-0.5)
    shared = {}
    model.layers[0].mixer(torch.randn(1, 1, D, dtype=torch.float64), shared)  # layer 0 fills in the bounds
    torch.testing.assert_close(block(x, shared), block.out_proj(block.norm(o.flatten(2))), rtol=1e-9, atol=1e-9)


def test_hgrn2_decode_uses_the_same_learned_bounds_as_the_forward():
    torch.manual_seed(0)
    model = _model(n_layers=3).double()
    with torch.no_grad():
        model.layers[0].mixer.lower_bound_logits.normal_(std=2.0)
    ids = torch.randint(0, 40, (2, 11))
    assert_model_decode_matches_forward(model, ids)


def test_hgrn2_later_layer_without_the_table_says_where_it_comes_from():
    with pytest.raises(ValueError, match="layer 0"):
        HGRN2(D, layer_idx=2, n_layers=4)(torch.randn(1, 3, D), {})


def test_hgrn2_fixed_lower_bound_and_block_on_its_own():
    assert [HGRN2(D, layer_idx=i, n_layers=4).lower_bound for i in range(4)] == [0.0, 0.25, 0.5, 0.75]  # its table's initial value
    assert HGRN2(D, layer_idx=3, lower_bound=0.1).lower_bound == 0.1
    with pytest.raises(ValueError):
        HGRN2(D, lower_bound=1.0)
    model = _model(n_layers=4, lower_bound=0.1)
    assert all(layer.mixer.lower_bound_logits is None for layer in model.layers)
    assert {layer.mixer.bound({}) for layer in model.layers} == {0.1}


@pytest.mark.parametrize("output_gate", [False, True])
def test_hgrn2_equals_gla_with_tied_gates_and_swish_query(output_gate):
    torch.manual_seed(0)
    block = HGRN2(D, layer_idx=2, n_layers=4, output_gate=output_gate).double()
    assert (block.g_proj is not None) == output_gate
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


def test_hgrn2_defaults_have_no_output_gate_as_the_reference():
    from training.compose import compose

    assert HGRN2(D).g_proj is None
    assert compose(overrides=["model=hgrn2"])["model"]["blocks"]["hgrn2"]["output_gate"] is False
