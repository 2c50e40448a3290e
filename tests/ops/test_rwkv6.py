"""rwkv6: the chunked path (the GLA scan with an exclusive state and a bonus) agrees with the recurrence."""

import pytest
import torch

from arch.ops import rwkv6, rwkv6_naive
from tests.helpers.numerics import outputs_and_grads, relative_error

B, H, DK, DV = 2, 2, 8, 6


def make_inputs(T, dtype=torch.float64, H=H, Dk=DK, Dv=DV):
    r, k = torch.randn(B, T, H, Dk, dtype=dtype), torch.randn(B, T, H, Dk, dtype=dtype)
    v = torch.randn(B, T, H, Dv, dtype=dtype)
    log_decay = -torch.exp(torch.randn(B, T, H, Dk, dtype=dtype) - 1)  # RWKV-6's w = -exp(.)
    bonus = torch.randn(H, Dk, dtype=dtype)
    initial_state = torch.randn(B, H, Dk, Dv, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return r, k, v, log_decay, bonus, initial_state


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("T", [1, 7, 64, 65, 200])
def test_chunked_matches_naive_outputs_state_and_grads(T, chunk_size):
    inputs = make_inputs(T)
    o, state, grads = outputs_and_grads(rwkv6, *inputs, scale=0.5, chunk_size=chunk_size)
    o_ref, state_ref, grads_ref = outputs_and_grads(rwkv6_naive, *inputs, scale=0.5)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):  # r, k, v, log_decay, bonus, initial_state
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_output_reads_the_state_before_the_token_plus_the_bonus():
    """Only token 0 writes (k = 0 after it): o_0 = r_0 diag(u) k_0^T v_0, o_1 = r_1 k_0^T v_0,
    o_2 = r_2 diag(exp(w_1)) k_0^T v_0: the decay of step t acts only from step t + 1 on."""
    r, k, v, log_decay, bonus, _ = make_inputs(3)
    k[:, 1:] = 0
    o, _ = rwkv6(r, k, v, log_decay, bonus)
    kv_0 = k[:, 0, :, :, None] * v[:, 0, :, None, :]  # [B, H, Dk, Dv]

    def read(t, S):
        return (r[:, t, :, None, :] @ S).squeeze(-2)

    torch.testing.assert_close(o[:, 0], read(0, bonus[..., None] * kv_0))
    torch.testing.assert_close(o[:, 1], read(1, kv_0))
    torch.testing.assert_close(o[:, 2], read(2, log_decay[:, 1].exp()[..., None] * kv_0))


@pytest.mark.parametrize("split", [1, 37, 64])
def test_state_hand_over_equals_one_run(split):
    r, k, v, log_decay, bonus, _ = make_inputs(100)
    o_full, state_full = rwkv6(r, k, v, log_decay, bonus)
    first, second = slice(None, split), slice(split, None)
    o1, state1 = rwkv6(r[:, first], k[:, first], v[:, first], log_decay[:, first], bonus)
    o2, state2 = rwkv6(r[:, second], k[:, second], v[:, second], log_decay[:, second], bonus, initial_state=state1)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_full)
    torch.testing.assert_close(state2, state_full)


@pytest.mark.parametrize("strength", [1.0, 20.0])
def test_float32_long_and_strongly_decayed_sequences_stay_accurate(strength):
    """T=4096 in float32, log-decay down to -20 per step: finite, and within 1e-4 of float64."""
    r, k, v, log_decay, bonus, initial_state = make_inputs(4096, H=1, Dk=16, Dv=16)
    log_decay = -strength * torch.rand_like(log_decay)
    o, state, grads = outputs_and_grads(
        rwkv6, *(x.float() for x in (r, k, v, log_decay, bonus, initial_state))
    )
    o_ref, state_ref, grads_ref = outputs_and_grads(rwkv6_naive, r, k, v, log_decay, bonus, initial_state)
    assert all(x.isfinite().all() for x in (o, state, *grads))
    assert relative_error(o, o_ref) <= 1e-4
    assert relative_error(state, state_ref) <= 1e-4
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert relative_error(grad, grad_ref) <= 1e-4


def test_decay_of_minus_twenty_per_step_has_finite_gradients():
    r, k, v, log_decay, bonus, initial_state = make_inputs(130, dtype=torch.float32)
    o, state, grads = outputs_and_grads(rwkv6, r, k, v, torch.full_like(log_decay, -20.0), bonus, initial_state)
    assert all(x.isfinite().all() for x in (o, state, *grads))


def test_fla_backend_on_cpu_raises_a_clear_error():
    r, k, v, log_decay, bonus, _ = make_inputs(8, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="backend='fla'"):
        rwkv6(r, k, v, log_decay, bonus, backend="fla")


def test_cpu_segments_match_the_recurrence_with_gradients(monkeypatch):
    """Segments of 64 tokens (the smallest the budget allows) through the shared chunked scan."""
    import arch.ops.gla as gla

    monkeypatch.setattr(gla, "CPU_SEGMENT_ELEMENTS", 1)
    inputs = make_inputs(150)
    o, state, grads = outputs_and_grads(rwkv6, *inputs, scale=0.5, chunk_size=16)
    o_ref, state_ref, grads_ref = outputs_and_grads(rwkv6_naive, *inputs, scale=0.5)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)
