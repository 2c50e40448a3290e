import torch

from arch.blocks.griffin import RGLRUBlock, sqrt_bounded_derivative
from tests.helpers.properties import assert_causal, assert_decode_matches_forward

D = 32


def test_rglru_base_decay_is_initialised_in_0p9_to_0p999():
    torch.manual_seed(0)
    a = RGLRUBlock(256, n_heads=4).base_decay()
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6
    assert a.max() - a.min() > 0.05  # spread over the range, not a constant


def test_sqrt_derivative_is_bounded_at_zero_and_exact_elsewhere():
    x = torch.tensor([0.0, 1e-12, 0.25, 1.0], dtype=torch.float64, requires_grad=True)
    sqrt_bounded_derivative(x, max_grad=1000.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1000.0, 1000.0, 1.0, 0.5], dtype=torch.float64))


def test_rglru_gradients_stay_finite_when_the_decay_reaches_one():
    torch.manual_seed(0)
    block = RGLRUBlock(D, n_heads=4)
    with torch.no_grad():
        block.Lambda.fill_(-40.0)  # softplus ~ 4e-18: a_t = 1 to float precision, 1 - a^2 = 0
    x = torch.randn(2, 9, D, requires_grad=True)
    block(x).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())
    assert torch.isfinite(x.grad).all()


def test_rglru_gates_are_block_diagonal_per_head():
    torch.manual_seed(0)
    block = RGLRUBlock(D, n_heads=4).double()
    u = torch.randn(1, 3, D, dtype=torch.float64)
    h, _ = block._rg_lru(u, None)
    u2 = u.clone()
    u2[..., :8] += 1.0  # head 0 only
    h2, _ = block._rg_lru(u2, None)
    assert (h2[..., :8] - h[..., :8]).abs().max() > 1e-6
    torch.testing.assert_close(h2[..., 8:], h[..., 8:])


def test_rglru_with_wider_recurrence_is_causal_and_decodes():
    block = RGLRUBlock(D, d_rnn=48, n_heads=3, d_conv=2).double()
    assert_causal(block, D)
    assert_decode_matches_forward(block, D, T=9)
