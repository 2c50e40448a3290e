import math

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


def test_rglru_conv_is_initialised_as_recurrentgemma_conv1d():
    """Conv1D: w ~ N(0, w_init_variance_scale / temporal_width), scale 0.01: std sqrt(0.01 / 4) = 0.05; b = 0."""
    torch.manual_seed(0)
    block = RGLRUBlock(4096, n_heads=4, d_conv=4)
    w = block.conv_weight.detach()
    assert abs(w.std().item() - math.sqrt(0.01 / 4)) < 0.05 * 0.02  # 16384 draws: the std to within 2%
    assert abs(w.mean().item()) < 0.05 * 0.05
    assert not block.conv_bias.any()


def _reference_rg_lru(block: RGLRUBlock, x: torch.Tensor, segment_pos: torch.Tensor) -> torch.Tensor:
    """recurrentgemma's RGLRU.forward + rnn_scan, token by token: reset = segment_pos == 0 zeroes a and
    sets the multiplier to 1."""
    xh = x.unflatten(-1, (block.n_heads, block.head_dim))
    gate_x = torch.sigmoid(torch.einsum("bthi,hij->bthj", xh, block.gate_weight[0]) + block.gate_bias[0]).flatten(-2)
    gate_a = torch.sigmoid(torch.einsum("bthi,hij->bthj", xh, block.gate_weight[1]) + block.gate_bias[1]).flatten(-2)
    log_a = -8.0 * gate_a * torch.nn.functional.softplus(block.Lambda)
    a = torch.exp(log_a)
    reset = (segment_pos == 0)[..., None]
    multiplier = reset + ~reset * torch.sqrt(1 - torch.exp(2 * log_a))
    a = a * ~reset
    h, out = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h = a[:, t] * h + (gate_x * x * multiplier)[:, t]
        out.append(h)
    return torch.stack(out, 1)


def test_rglru_resets_at_the_first_position_of_a_sequence():
    torch.manual_seed(0)
    block = RGLRUBlock(D, n_heads=4).double()
    with torch.no_grad():
        block.gate_bias.normal_()
    u = torch.randn(2, 12, D, dtype=torch.float64)
    h, _ = block._rg_lru(u, None)
    torch.testing.assert_close(h, _reference_rg_lru(block, u, torch.arange(12).expand(2, 12)))
    # a packed sequence of two documents (segment_pos 0..4, 0..6) is the two parts, each from a reset
    packed = _reference_rg_lru(block, u, torch.cat([torch.arange(5), torch.arange(7)]).expand(2, 12))
    torch.testing.assert_close(packed, torch.cat([block._rg_lru(u[:, :5], None)[0], block._rg_lru(u[:, 5:], None)[0]], 1))
    # without a reset, the second part continues from the first one's state
    first, state = block._rg_lru(u[:, :5], None)
    torch.testing.assert_close(torch.cat([first, block._rg_lru(u[:, 5:], state)[0]], 1), h)


def test_rglru_first_decode_step_resets_like_the_forward():
    torch.manual_seed(0)
    block = RGLRUBlock(D, n_heads=4).double()
    x = torch.randn(2, 6, D, dtype=torch.float64)
    state = block.init_state(2, None, torch.float64)
    assert state["h"] is None  # no history before the first token
    y, state = block.step(x[:, :1], state)
    torch.testing.assert_close(y, block(x)[:, :1])
    assert state["h"] is not None


def test_rglru_weight_decay_exempts_lambda_gate_biases_and_conv():
    block = RGLRUBlock(D, n_heads=4)
    exempt = {name for name, p in block.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert exempt == {"conv_weight", "conv_bias", "gate_bias", "Lambda"}
