"""The probe contract (`arch.probe`) of the linear-attention family: GLA, RetNet, HGRN2, linear attention
(Based's Taylor map and the other feature maps) and the RWKV-6 and RWKV-7 time mixes. The implicit attention A of
`attention_matrix` reproduces the block's own chunked path, mix(A, v) = pre_projection(x); A is causal;
the head mask scales the heads of o in forward and step alike."""

import pytest
import torch

from arch.blocks.gla import GLA
from arch.blocks.hgrn2 import HGRN2
from arch.blocks.retnet import RetNet
from arch.blocks.rwkv6 import RWKV6TimeMix
from arch.blocks.rwkv7 import RWKV7TimeMix
from arch.ops.gla import gated_linear_attention_naive
from arch.ops.implicit import decayed_dot_product, diagonal_plus_low_rank, segment_sum
from arch.ops.rwkv6 import rwkv6_naive
from arch.ops.rwkv7 import rwkv7_naive
from arch.probe import mix
from tests.helpers.properties import build_block, decode

D_MODEL, T = 64, 32

VARIANTS = {
    "gla": ("gla", {}),
    "retnet": ("retnet", {}),
    "hgrn2": ("hgrn2", {}),
    "hgrn2_bound": ("hgrn2", {"lower_bound": 0.3}),
    "hgrn2_output_gate": ("hgrn2", {"lower_bound": 0.2, "output_gate": True}),
    "linear_attention": ("linear_attention", {}),  # Based: Taylor features, normalised
    "linear_attention_chunk8": ("linear_attention", {"chunk_size": 8}),  # the state carried across chunks
    "linear_attention_elu": ("linear_attention", {"feature_map": "elu"}),
    "linear_attention_relu": ("linear_attention", {"feature_map": "relu", "normalize": False}),
    "linear_attention_identity": ("linear_attention", {"feature_map": "identity", "normalize": False}),
    "rwkv6": ("rwkv6", {}),
    "rwkv7": ("rwkv7", {}),
}


def build(variant: str) -> torch.nn.Module:
    """The block config conf/block/<name>.yaml (with the variant's overrides), float64, every parameter
    perturbed as tests/blocks/test_contract.py does (zero-initialised parts would hide bugs)."""
    name, overrides = VARIANTS[variant]
    return build_block(name, D_MODEL, **overrides)


def inputs(seed: int = 1, length: int = T) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, length, D_MODEL, dtype=torch.float64)


def post(block: torch.nn.Module, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The block's forward after pre_projection: norm, gate, out_proj (with its head mask, if set)."""
    if isinstance(block, RWKV6TimeMix):
        return block._post(o, block._project(x, None)[4])
    if isinstance(block, RWKV7TimeMix):
        r, _, k, v, _, _, g = block._project(x, None, None)
        return block._post(o, r, k, v, g)
    return block._post(o, x)


def n_groups(block) -> int:
    return block.n_heads


@pytest.mark.parametrize("variant", VARIANTS)
def test_implicit_attention_reproduces_the_blocks_own_path(variant):
    block, x = build(variant), inputs()
    with torch.no_grad():
        A, v = block.attention_matrix(x)
        o = block.pre_projection(x)
    H = n_groups(block)
    assert A.shape == (2, H, T, T) and v.shape[:3] == (2, T, H) and o.shape == v.shape
    torch.testing.assert_close(mix(A, v), o, rtol=1e-8, atol=1e-8)
    # and forward is post(pre_projection)
    torch.testing.assert_close(post(block, x, o), block(x), rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_implicit_attention_is_causal(variant):
    with torch.no_grad():
        A, _ = build(variant).attention_matrix(inputs())
    assert torch.equal(A.triu(1), torch.zeros_like(A))
    below = torch.ones(T, T, dtype=torch.bool).tril()
    assert (A[..., below] != 0).float().mean() > 0.9  # and what lies on and below the diagonal is there


def _masked(block, mask):
    block.head_mask = mask
    return block


@pytest.mark.parametrize("variant", VARIANTS)
def test_head_mask_of_ones_changes_nothing_and_zeros_remove_the_mixer(variant):
    """A zero mask removes the mixer's contribution: the output is exactly zero (no out_proj has a bias;
    the mask comes after a per-head norm's bias and RWKV-7's current-token term)."""
    block, x = build(variant), inputs()
    with torch.no_grad():
        reference = block(x)
        H = n_groups(block)
        assert torch.equal(_masked(block, torch.ones(H, dtype=torch.float64))(x), reference)
        assert block.out_proj.bias is None
        assert torch.equal(_masked(block, torch.zeros(H, dtype=torch.float64))(x), torch.zeros_like(reference))


PER_HEAD_NORM = (GLA, RetNet, RWKV6TimeMix, RWKV7TimeMix)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masking_a_head_scales_its_contribution(variant):
    """Blocks with a per-head norm: the mask scales a head after that norm, so the output is linear in
    the mask (y(mask) = y - (1 - m_h) y(only head h)); the others: equal to scaling the head's slice of
    o by hand."""
    block, x = build(variant), inputs()
    H = n_groups(block)
    with torch.no_grad():
        o = block.pre_projection(x)
        for head, value in ((1, 0.0), (0, 0.5)):
            mask = torch.ones(H, dtype=torch.float64)
            mask[head] = value
            if isinstance(block, PER_HEAD_NORM):
                only = torch.zeros(H, dtype=torch.float64)
                only[head] = 1.0
                alone = _masked(block, only)(x)
                block.head_mask = None
                expected = block(x) - (1 - value) * alone
                torch.testing.assert_close(_masked(block, mask)(x), expected, rtol=1e-12, atol=1e-12)
            else:
                by_hand = o.clone()
                by_hand[:, :, head] *= value
                expected = post(block, x, by_hand)  # no mask set
                torch.testing.assert_close(_masked(block, mask)(x), expected, rtol=0, atol=0)
            block.head_mask = None
            assert not torch.allclose(expected, block(x))


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_applies_the_head_mask_as_forward_does(variant):
    block, x = build(variant), inputs(length=12)
    H = n_groups(block)
    mask = torch.linspace(0.0, 1.0, H, dtype=torch.float64)
    _masked(block, mask)
    with torch.no_grad():
        full = block(x)
        stepped, _ = decode(block, x)
    torch.testing.assert_close(stepped, full, rtol=1e-9, atol=1e-9)
    block.head_mask = None
    with torch.no_grad():
        assert (decode(block, x)[0] - stepped).abs().max() > 1e-6


@pytest.mark.parametrize("variant", ["gla", "hgrn2", "rwkv6", "rwkv7", "linear_attention"])
def test_a_head_mask_can_carry_a_gradient(variant):
    block, x = build(variant), inputs()
    mask = torch.ones(n_groups(block), dtype=torch.float64, requires_grad=True)
    _masked(block, mask)(x).square().sum().backward()
    assert mask.grad is not None and mask.grad.shape == mask.shape and torch.isfinite(mask.grad).all()


def test_hgrn2_learned_bounds_reach_the_probe_through_shared():
    """A later layer reads its lower bound from the layer-0 block's table (through ``shared``), and so do its probes."""
    torch.manual_seed(0)
    first, later = HGRN2(D_MODEL, layer_idx=0, n_layers=3).double(), HGRN2(D_MODEL, layer_idx=1, n_layers=3).double()
    with torch.no_grad():
        first.lower_bound_logits.normal_()
        for p in later.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, shared = inputs(), {}
    with torch.no_grad():
        first(x, shared)
        A, v = later.attention_matrix(x, shared)
        o = later.pre_projection(x, shared)
        torch.testing.assert_close(mix(A, v), o, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(later._post(o, x), later(x, shared), rtol=0, atol=0)
        assert (later.attention_matrix(x)[0] - A).abs().max() > 1e-6  # without shared: the initial bound 1/3


def test_rwkv7_value_residual_reaches_the_probe_through_shared():
    """A later RWKV-7 layer mixes in the first layer's values (through ``shared``): its probe's v does too."""
    torch.manual_seed(0)
    first, later = (RWKV7TimeMix(D_MODEL, layer_idx=i, head_dim=32, n_layers=2).double() for i in (0, 1))
    with torch.no_grad():
        for p in [*first.parameters(), *later.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    x, shared = inputs(), {}
    with torch.no_grad():
        h = first(x, shared)
        A, v = later.attention_matrix(h, shared)
        o = later.pre_projection(h, shared)
        torch.testing.assert_close(mix(A, v), o, rtol=1e-8, atol=1e-8)
        r, _, k, v_post, _, _, g = later._project(h, None, shared)
        torch.testing.assert_close(later._post(o, r, k, v_post, g), later(h, shared), rtol=0, atol=0)
        assert (later.attention_matrix(h)[1] - v).abs().max() > 1e-6  # without shared: no value residual


# the shared builders against the ops' token-by-token oracles


@pytest.mark.parametrize("decay", ["none", "scalar", "channel"])
def test_decayed_dot_product_is_the_gated_scan(decay):
    torch.manual_seed(0)
    B, L, H, Dk, Dv = 2, 29, 3, 5, 4
    q, k = torch.randn(2, B, L, H, Dk, dtype=torch.float64).unbind(0)
    v = torch.randn(B, L, H, Dv, dtype=torch.float64)
    g = {"none": None, "scalar": -torch.rand(B, L, H, dtype=torch.float64), "channel": -torch.rand(B, L, H, Dk, dtype=torch.float64)}[decay]
    A = decayed_dot_product(q, k, g, scale=0.7)
    torch.testing.assert_close(mix(A, v), gated_linear_attention_naive(q, k, v, g, scale=0.7)[0], rtol=1e-10, atol=1e-10)


def test_decayed_dot_product_exclusive_with_bonus_is_rwkv6(monkeypatch):
    torch.manual_seed(0)
    B, L, H, Dk, Dv = 2, 29, 3, 5, 4
    r, k, w = torch.randn(3, B, L, H, Dk, dtype=torch.float64).unbind(0)
    w = -torch.exp(w)
    v, u = torch.randn(B, L, H, Dv, dtype=torch.float64), torch.randn(H, Dk, dtype=torch.float64)
    expected = rwkv6_naive(r, k, v, w, u, scale=0.5)[0]
    torch.testing.assert_close(mix(decayed_dot_product(r, k, w, scale=0.5, exclusive=True, bonus=u), v), expected, rtol=1e-10, atol=1e-10)
    # the channel blocks (a budget of one channel per pass) give the same matrix
    monkeypatch.setattr("arch.ops.implicit.BLOCK_ELEMENTS", 1)
    torch.testing.assert_close(mix(decayed_dot_product(r, k, w, scale=0.5, exclusive=True, bonus=u), v), expected, rtol=1e-10, atol=1e-10)


def test_segment_sum_sums_each_segment():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    inf = float("inf")
    assert torch.equal(
        segment_sum(x), torch.tensor([[0, -inf, -inf, -inf], [2, 0, -inf, -inf], [6, 4, 0, -inf], [14, 12, 8, 0]], dtype=torch.float64)
    )
    assert torch.equal(
        segment_sum(x, exclusive=True),
        torch.tensor([[-inf, -inf, -inf, -inf], [0, -inf, -inf, -inf], [2, 0, -inf, -inf], [6, 4, 0, -inf]], dtype=torch.float64),
    )


def test_diagonal_plus_low_rank_is_rwkv7s_state_update():
    torch.manual_seed(0)
    B, L, H, Dk, Dv = 2, 23, 3, 5, 4
    r, k, w, kk = torch.randn(4, B, L, H, Dk, dtype=torch.float64).unbind(0)
    w, kk = -torch.exp(w), torch.nn.functional.normalize(kk, dim=-1)
    a, b = -kk, kk * torch.rand(B, L, H, Dk, dtype=torch.float64)
    v = torch.randn(B, L, H, Dv, dtype=torch.float64)
    A = diagonal_plus_low_rank(r, w, k, a, b)
    assert torch.equal(A.triu(1), torch.zeros_like(A))
    torch.testing.assert_close(mix(A, v), rwkv7_naive(r, w, k, v, a, b)[0], rtol=1e-10, atol=1e-10)
