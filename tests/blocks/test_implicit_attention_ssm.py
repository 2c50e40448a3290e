"""The probe contract (`arch.probe`) of the state-space / gated-RNN blocks: Mamba, Mamba-2, Griffin's
RG-LRU and H3. Their implicit attention A reproduces the block's own fast path (o = mix(A, v)), is
causal, and the head mask scales the groups of o in forward and step alike."""

import pytest
import torch
import torch.nn.functional as F

from arch.blocks.h3 import H3
from arch.probe import mix
from tests.helpers.properties import build_block, decode, perturbed

D_MODEL, T = 64, 32


def build(name: str) -> torch.nn.Module:
    """As tests/blocks/test_contract.py builds a block (conf/block/<name>.yaml, float64, every parameter
    perturbed), on the PyTorch backend; "h3_heads" is H3 with heads of 4 channels (P = 4)."""
    if name == "h3_heads":
        torch.manual_seed(0)
        return perturbed(H3(D_MODEL, layer_idx=1, head_dim=4, d_state=16, backend="torch").double())
    return build_block(name, D_MODEL, backend="torch")


def post(block, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """What each block does to o [B, T, G, Dv] after the probe point, written out by hand."""
    name = type(block).__name__
    if name == "Mamba":
        z = block.in_proj(x).chunk(2, dim=-1)[1]
        return block.out_proj(o.squeeze(-1) * F.silu(z))
    if name == "Mamba2":
        z = block.in_proj(x)[..., : block.d_inner]
        return block.out_proj(block.norm(o.flatten(2) * F.silu(z)))
    if name == "RGLRUBlock":
        return block.out_proj(F.gelu(block.y_proj(x)) * o.squeeze(-1))
    assert name == "H3"
    return block.out_proj(o.flatten(2))


# block: (G, Dv) at d_model 64 with the configs of conf/block/
GROUPS = {
    "mamba": (128, 1),  # d_inner = 2 * 64 channels
    "mamba2": (8, 16),  # 128 / head_dim 16 heads
    "rglru": (64, 1),  # d_rnn = d_model channels
    "h3": (64, 1),  # head_dim 1: the d_model channels
    "h3_heads": (16, 4),
}
NAMES = list(GROUPS)


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, T, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_implicit_attention_reproduces_the_pre_projection_output_and_is_causal(name):
    block, x = build(name), _x()
    with torch.no_grad():
        a, v = block.attention_matrix(x)
        o = block.pre_projection(x)
    G, Dv = GROUPS[name]
    assert a.shape == (2, G, T, T) and v.shape == (2, T, G, Dv) and o.shape == (2, T, G, Dv)
    torch.testing.assert_close(mix(a, v), o, rtol=0, atol=1e-8)
    assert torch.equal(a.triu(1), torch.zeros_like(a)), "A[t, s] != 0 for some s > t"
    assert a.abs().amax() > 0
    # forward is post(o): the probe point is where the block really is
    with torch.no_grad():
        torch.testing.assert_close(block(x), post(block, x, o), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_head_mask_of_ones_changes_nothing_and_of_zeros_removes_the_mixer(name):
    block, x = build(name), _x()
    G = GROUPS[name][0]
    with torch.no_grad():
        plain = block(x)
        block.head_mask = torch.ones(G, dtype=torch.float64)
        assert torch.equal(block(x), plain)
        block.head_mask = torch.zeros(G, dtype=torch.float64)
        # nothing of the mixer is left: out_proj of zeros (its bias, where it has one)
        assert torch.equal(block(x), block.out_proj(x.new_zeros(*x.shape[:2], block.out_proj.in_features)))
        block.head_mask = None
        assert torch.equal(block(x), plain)


@pytest.mark.parametrize("name", NAMES)
def test_masking_a_group_is_zeroing_its_slice_of_o(name):
    block, x = build(name), _x()
    G = GROUPS[name][0]
    with torch.no_grad():
        o = block.pre_projection(x)
        for g in (0, G // 2 + 1):
            block.head_mask = torch.ones(G, dtype=torch.float64)
            block.head_mask[g] = 0
            by_hand = o.clone()
            by_hand[:, :, g] = 0
            torch.testing.assert_close(block(x), post(block, x, by_hand), rtol=1e-12, atol=1e-12)
        scale = torch.rand(G, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        block.head_mask = scale
        torch.testing.assert_close(block(x), post(block, x, o * scale[:, None]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_step_with_a_head_mask_equals_forward_with_it(name):
    block, x = build(name), _x()
    G = GROUPS[name][0]
    mask = (torch.rand(G, generator=torch.Generator().manual_seed(3)) > 0.4).double()
    mask[0] = 0.5
    block.head_mask = mask
    with torch.no_grad():
        full = block(x)
        stepped, _ = decode(block, x)
    torch.testing.assert_close(stepped, full, rtol=1e-9, atol=1e-9)
    block.head_mask = None
    with torch.no_grad():
        assert (block(x) - full).abs().amax() > 1e-6, "the mask did nothing"


@pytest.mark.parametrize("name", NAMES)
def test_a_float_head_mask_carries_a_gradient(name):
    """Head importance by gradient: dL/dmask[g] = <dL/do_g, o_g> at mask = 1."""
    block, x = build(name), _x()
    G = GROUPS[name][0]
    block.head_mask = torch.ones(G, dtype=torch.float64, requires_grad=True)
    block(x).square().sum().backward()
    grad = block.head_mask.grad
    assert grad is not None and grad.shape == (G,) and grad.abs().amax() > 0
    o = block.pre_projection(x).detach().requires_grad_()
    post(block, x, o).square().sum().backward()
    torch.testing.assert_close(grad, (o.grad * o).sum((0, 1, 3)), rtol=1e-10, atol=1e-10)
