"""RetNet: per-head decays exactly gamma_h = 1 - 2^(-5-h); the block equals retention's parallel form
(q k^T * D) v with D_nm = gamma^(n-m); rotary positions continue across `step`."""

import torch
import torch.nn.functional as F

from arch.blocks.retnet import RetNet
from arch.ops.rope import rotary_embedding
from tests.helpers.properties import assert_decode_matches_forward

D = 32


def test_retnet_decays_are_exactly_one_minus_two_to_minus_five_minus_h():
    block = RetNet(D, n_heads=4)
    expected = torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256], dtype=torch.float64)
    torch.testing.assert_close(block.decay(), expected, rtol=0, atol=0)
    assert block.head_k == D // 4 and block.head_v == 2 * D // 4  # key dim d, value dim 2d


def test_retnet_equals_the_parallel_form_with_the_decay_mask():
    torch.manual_seed(0)
    block = RetNet(D, n_heads=2).double()
    x = torch.randn(2, 70, D, dtype=torch.float64)
    T, pos = x.shape[1], torch.arange(x.shape[1])
    q = rotary_embedding(block.q_proj(x).unflatten(-1, (2, 16)), pos).transpose(1, 2)
    k = rotary_embedding(block.k_proj(x).unflatten(-1, (2, 16)), pos).transpose(1, 2)
    v = block.v_proj(x).unflatten(-1, (2, 32)).transpose(1, 2)
    gamma = torch.tensor([1 - 2.0**-5, 1 - 2.0**-6], dtype=torch.float64)
    n_minus_m = (pos[:, None] - pos[None, :]).double()
    mask = torch.where(n_minus_m >= 0, gamma[:, None, None] ** n_minus_m.clamp(min=0), 0.0)  # [H, T, T]
    o = ((q @ k.transpose(-1, -2)) / 16**0.5 * mask) @ v
    o = F.group_norm(o.transpose(1, 2).reshape(2 * T, 2 * D), 2, block.group_norm.weight, block.group_norm.bias, 1e-5)
    expected = block.out_proj(o.view(2, T, 2 * D) * F.silu(block.g_proj(x)))
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_retnet_step_keeps_positions_and_state_is_constant_in_length():
    torch.manual_seed(0)
    block = RetNet(D, n_heads=4).double()
    assert block.state_size(10) == block.state_size(10**6) == 4 * 8 * 16
    assert_decode_matches_forward(block, D, T=30)
