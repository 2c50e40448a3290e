import torch

from arch.blocks.h3 import H3
from tests.helpers.properties import assert_causal, assert_decode_matches_forward

D = 16


def test_h3_with_an_identity_shift_matches_a_token_by_token_loop():
    torch.manual_seed(0)
    block = H3(D, head_dim=2, d_state=3, shift_len=2).double()
    with torch.no_grad():
        block.shift_weight.copy_(torch.tensor([0.0, 1.0]).expand(D, 2))  # k~_t = k_t
    x = torch.randn(2, 7, D, dtype=torch.float64)
    q, k, v = (t.unflatten(-1, (8, 2)) for t in block.qkv_proj(x).chunk(3, -1))
    a = torch.exp(-torch.exp(block.log_dt)[:, None] * torch.exp(block.A_log)).view(8, 2, 2, 3)
    C, Dskip = block.C.view(8, 2, 2, 3), block.D.view(8, 2, 2)
    s = torch.zeros(2, 8, 2, 2, 3, dtype=torch.float64)
    outs = []
    for t in range(7):
        u = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, P, P]
        s = a * s + (1 - a) * u[..., None]
        y = (s * C).sum(-1) + Dskip * u
        outs.append(torch.einsum("bhi,bhij->bhj", q[:, t], y).flatten(1))
    torch.testing.assert_close(block(x), block.out_proj(torch.stack(outs, 1)), rtol=1e-10, atol=1e-10)


def test_h3_multi_head_outer_product_is_causal_and_decodes():
    block = H3(D, head_dim=4, d_state=2).double()
    assert block.state_size(50) == D * 3 + 4 * 16 * 2
    assert_causal(block, D)
    assert_decode_matches_forward(block, D, T=9)


def test_h3_decays_start_within_dt_range():
    block = H3(D, d_state=4)
    a = torch.exp(-torch.exp(block.log_dt)[:, None] * torch.exp(block.A_log))
    assert (a > torch.exp(torch.tensor(-0.4 - 1e-6))).all() and (a < 1).all()
