"""Mamba-2: the block equals a hand-written SSD composition on the naive ops (conv, then gated linear
attention with q = C, k = B, v = dt x, log-decay dt A); initialisation; decode state."""

import torch
import torch.nn.functional as F

from arch.blocks.mamba2 import Mamba2
from arch.ops.gla import gated_linear_attention_naive
from arch.ops.short_conv import causal_conv1d_naive
from tests.helpers.properties import assert_decode_matches_forward

D = 32


def test_mamba2_forward_equals_hand_written_ssd_composition():
    torch.manual_seed(0)
    block = Mamba2(D, d_state=8, head_dim=16).double()  # d_inner 64, 4 heads
    for p in block.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 70, D, dtype=torch.float64)
    z, xBC, dt = block.in_proj(x).split([64, 64 + 16, 4], dim=-1)
    xBC, _ = causal_conv1d_naive(xBC, block.conv_weight, block.conv_bias, activation="silu")
    u, Bm, Cm = xBC.split([64, 8, 8], dim=-1)
    u = u.unflatten(-1, (4, 16))
    dt = F.softplus(dt + block.dt_bias)
    A = -torch.exp(block.A_log)
    y, _ = gated_linear_attention_naive(
        Cm[:, :, None].expand(-1, -1, 4, -1), Bm[:, :, None].expand(-1, -1, 4, -1), u * dt[..., None], dt * A, scale=1.0
    )
    y = (y + block.D[:, None] * u).flatten(2) * F.silu(z)
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5) * block.norm.weight
    torch.testing.assert_close(block(x), block.out_proj(y), rtol=1e-9, atol=1e-9)


def test_mamba2_ssd_is_the_scalar_decay_state_space_recurrence():
    # s_t = exp(dt A) s_{t-1} + B_t^T (dt x_t),  y_t = C_t s_t, one head, written out
    torch.manual_seed(0)
    T, N, P = 6, 3, 2
    Bm, Cm, x = torch.randn(T, N, dtype=torch.float64), torch.randn(T, N, dtype=torch.float64), torch.randn(T, P, dtype=torch.float64)
    dt, A = torch.rand(T, dtype=torch.float64), -1.7
    s, ys = torch.zeros(N, P, dtype=torch.float64), []
    for t in range(T):
        s = torch.exp(dt[t] * A) * s + Bm[t, :, None] * (dt[t] * x[t])[None, :]
        ys.append(Cm[t] @ s)
    q, k, v, log_decay = Cm[None, :, None], Bm[None, :, None], (x * dt[:, None])[None, :, None], (dt * A)[None, :, None]
    y, _ = gated_linear_attention_naive(q, k, v, log_decay, scale=1.0)
    torch.testing.assert_close(y[0, :, 0], torch.stack(ys))


def test_mamba2_initialisation_and_state_size():
    torch.manual_seed(0)
    block = Mamba2(D, d_state=16, head_dim=8)
    A = torch.exp(block.A_log)
    assert block.n_heads == 8 and A.min() >= 1 and A.max() <= 16
    dt = F.softplus(block.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    torch.testing.assert_close(block.D, torch.ones(8))
    # conv window of (x, B, C) plus the SSM state, independent of the length
    assert block.state_size(10**6) == (64 + 2 * 16) * 3 + 8 * 16 * 8
    assert_decode_matches_forward(block.double(), D, T=9)
