"""Specifications of the diagonal scans (arch.ops.scan) and RWKV-7 (arch.ops.rwkv7): every fast path
agrees with its token-by-token oracle."""

import math

import pytest
import torch
import torch.nn.functional as F

from arch.ops import (
    diagonal_recurrence,
    diagonal_recurrence_naive,
    rwkv7,
    rwkv7_naive,
    selective_scan,
    selective_scan_naive,
)
from tests.helpers.numerics import outputs_and_grads, relative_error

LENGTHS = [1, 7, 64, 65, 200]


def diagonal_inputs(length, dtype=torch.float64, strongest_log_decay=-2.0, batch=2, dim=5):
    log_a = torch.rand(batch, length, dim, dtype=dtype) * strongest_log_decay
    b = torch.randn(batch, length, dim, dtype=dtype)
    h0 = torch.randn(batch, dim, dtype=dtype)
    return (log_a, b), {"initial_state": h0}


def selective_inputs(length, dtype=torch.float64, batch=2, d_inner=6, d_state=4, delta_shift=0.0):
    """Mamba's parametrisation: A = -exp(U[log 1, log 16]), delta = softplus(N(0, 1) + shift)."""
    u = torch.randn(batch, length, d_inner, dtype=dtype)
    delta = F.softplus(torch.randn(batch, length, d_inner, dtype=dtype) + delta_shift)
    A = -torch.exp(torch.empty(d_inner, d_state, dtype=dtype).uniform_(0.0, math.log(16)))
    B, C = torch.randn(2, batch, length, d_state, dtype=dtype)
    D = torch.randn(d_inner, dtype=dtype)
    z = torch.randn(batch, length, d_inner, dtype=dtype)
    x0 = torch.randn(batch, d_inner, d_state, dtype=dtype)
    return (u, delta, A, B, C, D, z), {"initial_state": x0}


def rwkv7_inputs(length, dtype=torch.float64, batch=2, heads=2, dk=4, dv=3, log_decay=None):
    """As the RWKV-7 layer produces them: a = -kk, b = kk * sigmoid(.), kk the L2-normalised key."""
    r, k = torch.randn(2, batch, length, heads, dk, dtype=dtype)
    v = torch.randn(batch, length, heads, dv, dtype=dtype)
    if log_decay is None:
        log_decay = -torch.exp(torch.randn(batch, length, heads, dk, dtype=dtype) - 0.5)
    kk = F.normalize(torch.randn(batch, length, heads, dk, dtype=dtype), dim=-1)
    in_context_rate = torch.sigmoid(torch.randn(batch, length, heads, 1, dtype=dtype))
    S0 = torch.randn(batch, heads, dv, dk, dtype=dtype) * 0.5
    return (r, log_decay, k, v, -kk, kk * in_context_rate), {"initial_state": S0}


OPS = {
    "diagonal_recurrence": (diagonal_recurrence, diagonal_recurrence_naive, diagonal_inputs),
    "selective_scan": (selective_scan, selective_scan_naive, selective_inputs),
    "rwkv7": (rwkv7, rwkv7_naive, rwkv7_inputs),
}


@pytest.mark.parametrize("T", LENGTHS, ids=lambda t: f"T={t}")
@pytest.mark.parametrize("op_name", OPS)
def test_fast_path_matches_naive_outputs_states_and_gradients(op_name, T):
    fast, naive, make_inputs = OPS[op_name]
    args, kwargs = make_inputs(T)
    out, state, grads = outputs_and_grads(fast, *args, kwargs["initial_state"])
    out_ref, state_ref, grads_ref = outputs_and_grads(naive, *args, kwargs["initial_state"])
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 256], ids=lambda c: f"chunk={c}")
def test_diagonal_recurrence_does_not_depend_on_chunk_size(chunk_size):
    (log_a, b), kwargs = diagonal_inputs(50)
    h, state = diagonal_recurrence(log_a, b, chunk_size=chunk_size, **kwargs)
    h_ref, state_ref = diagonal_recurrence_naive(log_a, b, **kwargs)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_ref, rtol=1e-12, atol=1e-12)


def test_diagonal_recurrence_accepts_any_feature_shape():
    log_a = -torch.rand(2, 30, 3, 4, dtype=torch.float64)
    b = torch.randn(2, 30, 3, 4, dtype=torch.float64)
    h, state = diagonal_recurrence(log_a, b, chunk_size=8)
    h_ref, state_ref = diagonal_recurrence_naive(log_a, b)
    assert h.shape == (2, 30, 3, 4) and state.shape == (2, 3, 4)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(state, state_ref)


@pytest.mark.parametrize("split", [1, 37, 64], ids=lambda t: f"split={t}")
@pytest.mark.parametrize("op_name", OPS)
def test_state_hand_over_equals_full_run(op_name, split):
    """op(x[:, :t]) then op(x[:, t:], initial_state=first final state) == op(x)."""
    fast, _, make_inputs = OPS[op_name]
    args, kwargs = make_inputs(100)
    time_major = [t.dim() > 2 and t.shape[1] == 100 for t in args]
    head = [t[:, :split] if tm else t for t, tm in zip(args, time_major)]
    tail = [t[:, split:] if tm else t for t, tm in zip(args, time_major)]
    out_head, state_head = fast(*head, **kwargs)
    out_tail, state = fast(*tail, initial_state=state_head)
    out_full, state_full = fast(*args, **kwargs)
    torch.testing.assert_close(torch.cat([out_head, out_tail], 1), out_full)
    torch.testing.assert_close(state, state_full)


def strong_decay_inputs(op_name, length):
    """float32 inputs whose per-step log-decays reach -20 (and also include near-1 decays)."""
    if op_name == "diagonal_recurrence":
        (_, b), kwargs = diagonal_inputs(length, dtype=torch.float32, dim=8)
        log_a = -20.0 * torch.rand(b.shape) ** 4
        return (log_a, b), kwargs
    if op_name == "selective_scan":
        args, kwargs = selective_inputs(length, dtype=torch.float32, d_inner=8, d_state=4, delta_shift=-1.0)
        u, delta, A, *rest = args
        return (u, delta.clamp(max=20.0 / 16), A, *rest), kwargs  # delta * A down to -20
    log_decay = -20.0 * torch.rand(2, length, 2, 4) ** 4
    return rwkv7_inputs(length, dtype=torch.float32, log_decay=log_decay)


@pytest.mark.parametrize("op_name", OPS)
def test_float32_is_stable_and_accurate_for_strong_decays_at_T4096(op_name):
    fast, naive, _ = OPS[op_name]
    args, kwargs = strong_decay_inputs(op_name, 4096)
    out, state, grads = outputs_and_grads(fast, *args, kwargs["initial_state"])
    for t in (out, state, *grads):
        assert torch.isfinite(t).all()
    args64 = [t.double() for t in (*args, kwargs["initial_state"])]
    out_ref, state_ref, grads_ref = outputs_and_grads(naive, *args64)
    for actual, expected in zip((out, state, *grads), (out_ref, state_ref, *grads_ref), strict=True):
        assert relative_error(actual, expected) <= 1e-4


def test_selective_scan_backend_mamba_ssm_on_cpu_raises_a_clear_error():
    args, _ = selective_inputs(8, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(*args, backend="mamba_ssm")


def test_selective_scan_without_D_and_z_is_the_plain_ssm():
    (u, delta, A, B, C, _, _), kwargs = selective_inputs(20)
    y, state = selective_scan(u, delta, A, B, C, **kwargs)
    y_ref, state_ref = selective_scan_naive(u, delta, A, B, C, **kwargs)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state, state_ref)


@pytest.mark.parametrize("op_name", OPS)
def test_bfloat16_inputs_give_bfloat16_outputs_and_float32_states(op_name):
    fast, _, make_inputs = OPS[op_name]
    args, kwargs = make_inputs(10, dtype=torch.float32)
    out, state = fast(*(t.bfloat16() for t in args), initial_state=kwargs["initial_state"])
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
