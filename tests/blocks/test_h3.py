import math

import torch

from arch.blocks.h3 import H3
from tests.helpers.properties import assert_causal, assert_decode_matches_forward

D = 16


def h3_token_by_token(block: H3, x: torch.Tensor) -> torch.Tensor:
    """H3 from the paper's equations, one token at a time, with complex numbers:
    shift SSM z_t = shift(z_{t-1}) + B_s k_t, k~_t = C_s . z_t + D_s k_t; diagonal SSM with
    Ā = (1 + ΔA/2)/(1 - ΔA/2), B̄ = B Δ/(1 - ΔA/2): s_t = Ā s_{t-1} + B̄ u_t, y_t = 2 Re(C s_t) + D u_t."""
    H, P, N = block.n_heads, block.head_dim, block.d_state
    A = -torch.exp(block.log_A_real) + 1j * block.A_imag  # [H, N/2]
    dt = torch.exp(block.log_dt)[:, None]
    A_bar = (1 + dt * A / 2) / (1 - dt * A / 2)
    B_bar = torch.view_as_complex(block.B) * dt / (1 - dt * A / 2)
    C = torch.view_as_complex(block.C)
    z = torch.zeros(x.shape[0], block.d_model, block.shift_len, dtype=x.dtype)
    s = torch.zeros(x.shape[0], H, P, P, N // 2, dtype=A.dtype)
    outs = []
    for t in range(x.shape[1]):
        q, k, v = block.qkv_proj(x[:, t]).chunk(3, -1)
        z = torch.cat([torch.zeros_like(z[..., :1]), z[..., :-1]], -1) + block.shift_B * k[..., None]
        k = (block.shift_C * z).sum(-1) + block.shift_D * k
        u = k.view(-1, H, P, 1) * v.view(-1, H, 1, P)
        s = A_bar[:, None, None] * s + B_bar[:, None, None] * u[..., None]
        y = 2 * (C[:, None, None] * s).sum(-1).real + block.D[:, None, None] * u
        outs.append(torch.einsum("bhi,bhij->bhj", q.view(-1, H, P), y).flatten(1))
    return block.out_proj(torch.stack(outs, 1))


def test_h3_matches_a_token_by_token_complex_recurrence():
    torch.manual_seed(0)
    block = H3(D, head_dim=2, d_state=8).double()
    with torch.no_grad():  # move every parameter off its initial value: B, B_s no longer 1 and e_1
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 23, D, dtype=torch.float64)
    torch.testing.assert_close(block(x), h3_token_by_token(block, x), rtol=1e-10, atol=1e-10)


def test_h3_stays_accurate_in_float32_over_long_sequences():
    torch.manual_seed(0)
    block = H3(8, d_state=64)
    x = torch.randn(1, 3000, 8)
    with torch.no_grad():
        y32, y64 = block(x).double(), block.double()(x.double())
    assert (y32 - y64).norm() / y64.norm() < 1e-4


def test_h3_initialisation_is_s4d_lin_with_random_skips_and_a_d_state_tap_shift():
    torch.manual_seed(0)
    block = H3(64)
    assert block.d_state == 64 and block.log_A_real.shape == (64, 32)
    torch.testing.assert_close(-torch.exp(block.log_A_real), torch.full((64, 32), -0.5))
    torch.testing.assert_close(block.A_imag, (math.pi * torch.arange(32.0)).expand(64, -1))
    torch.testing.assert_close(torch.view_as_complex(block.B), torch.ones(64, 32, dtype=torch.cfloat))
    assert 0.6 < block.C.std() < 0.8  # complex randn: real and imaginary parts N(0, 1/2)
    dt = torch.exp(block.log_dt)
    assert (dt >= 1e-3).all() and (dt <= 1e-1).all() and dt.max() / dt.min() > 10
    for skip in (block.D, block.shift_D):
        assert 0.6 < skip.std() < 1.4 and (skip != 1).all()
    assert block.shift_len == 64 and block.shift_kernel().shape == (64, 64)
    torch.testing.assert_close(block.shift_B, torch.eye(64)[0].expand(64, -1))
    assert block.shift_C.abs().max() <= 64**-0.5  # kaiming_uniform(a=sqrt 5): U(-1/sqrt N, 1/sqrt N)
    assert block.init_state(2)["shift"].shape == (2, 64, 63)


def test_h3_exempts_dt_A_and_B_from_weight_decay_but_not_C():
    block = H3(D)
    exempt = {name for name, p in block.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert exempt == {"shift_B", "log_dt", "log_A_real", "A_imag", "B"}


def test_h3_multi_head_outer_product_is_causal_and_decodes():
    block = H3(D, head_dim=4, d_state=6).double()
    assert block.state_size(50) == D * 5 + 4 * 16 * 6
    assert_causal(block, D)
    assert_decode_matches_forward(block, D, T=9)
