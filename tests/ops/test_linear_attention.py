"""linear_attention and Based's Taylor feature map."""

import pytest
import torch

from arch.ops import linear_attention, linear_attention_naive, taylor_feature_map
from tests.helpers.numerics import outputs_and_grads

B, H, D, DV = 2, 2, 4, 6  # the Taylor map gives Dk = 1 + 4 + 16 = 21


def make_inputs(T, dtype=torch.float64):
    q = taylor_feature_map(torch.randn(B, T, H, D, dtype=dtype))
    k = taylor_feature_map(torch.randn(B, T, H, D, dtype=dtype))
    v = torch.randn(B, T, H, DV, dtype=dtype)
    S, z = torch.randn(B, H, q.shape[-1], DV, dtype=dtype), torch.rand(B, H, q.shape[-1], 1, dtype=dtype)
    return q, k, v, torch.cat([S, z], dim=-1)


@pytest.mark.parametrize("d", [1, 4, 16])
def test_taylor_feature_map_dot_product_is_second_order_exp_expansion(d):
    q, k = torch.randn(5, d, dtype=torch.float64), torch.randn(5, d, dtype=torch.float64)
    phi_q, phi_k = taylor_feature_map(q), taylor_feature_map(k)
    qk = (q * k).sum(-1)
    assert phi_q.shape == (5, 1 + d + d * d)
    torch.testing.assert_close((phi_q * phi_k).sum(-1), 1 + qk / d**0.5 + qk**2 / (2 * d))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("T", [1, 7, 64, 65, 200])
def test_chunked_matches_naive_outputs_state_and_grads(T, chunk_size, normalize):
    inputs = make_inputs(T)
    o, state, grads = outputs_and_grads(linear_attention, *inputs, normalize=normalize, chunk_size=chunk_size)
    o_ref, state_ref, grads_ref = outputs_and_grads(linear_attention_naive, *inputs, normalize=normalize)
    assert state.shape == (B, H, 1 + D + D * D, DV + 1)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_normalised_output_is_the_phi_weighted_average_of_values():
    """o_t = sum_{s<=t} (phi(q_t).phi(k_s)) v_s / sum_{s<=t} phi(q_t).phi(k_s), i.e. attention with the
    kernel phi(q).phi(k) in place of exp(q.k / sqrt(d))."""
    q, k, v, _ = make_inputs(9)
    o, _ = linear_attention(q, k, v, eps=0.0)
    scores = torch.einsum("bthd,bshd->bhts", q, k).tril()
    expected = torch.einsum("bhts,bshv->bthv", scores / scores.sum(-1, keepdim=True), v)
    torch.testing.assert_close(o, expected)


@pytest.mark.parametrize("split", [1, 37, 64])
def test_state_hand_over_equals_one_run(split):
    q, k, v, _ = make_inputs(100)
    o_full, state_full = linear_attention(q, k, v)
    o1, state1 = linear_attention(q[:, :split], k[:, :split], v[:, :split])
    o2, state2 = linear_attention(q[:, split:], k[:, split:], v[:, split:], initial_state=state1)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_full)
    torch.testing.assert_close(state2, state_full)


def test_fla_backend_on_cpu_raises_a_clear_error():
    q, k, v, _ = make_inputs(8, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="backend='fla'"):
        linear_attention(q, k, v, backend="fla")
