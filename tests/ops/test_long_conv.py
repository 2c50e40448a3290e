"""long_conv: the FFT path equals the direct causal sum (float64, 1e-10), for T a power of two or
not and for filters longer or shorter than the sequence; gradients agree; it is causal, linear rather
than circular, and hands its state over to the decode step."""

import pytest
import torch

from arch.ops import long_conv, long_conv_naive, long_conv_step
from arch.ops.long_conv import _fft_length
from tests.helpers.numerics import outputs_and_grads, relative_error

B, D = 2, 5


def make_inputs(T, L, n_state=0, dtype=torch.float64):
    u, k = torch.randn(B, T, D, dtype=dtype), torch.randn(D, L, dtype=dtype)
    return u, k, torch.randn(B, D, n_state, dtype=dtype)


def direct_sum(u, k):
    """y_t = sum_{j <= min(t, L-1)} k[:, j] u_{t-j}, written as one einsum over a causal Toeplitz tensor."""
    T, L = u.shape[1], k.shape[1]
    lag = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # t - s
    taps = torch.where((lag >= 0) & (lag < L), k[:, lag.clamp(0, L - 1)], torch.zeros((), dtype=k.dtype))  # [D, T, S]
    return torch.einsum("dts,bsd->btd", taps, u)


@pytest.mark.parametrize(("T", "L"), [(1, 1), (16, 16), (17, 64), (100, 2048), (64, 9), (37, 37)])
def test_fft_path_equals_the_direct_causal_sum_in_float64(T, L):
    u, k, _ = make_inputs(T, L)
    y, state = long_conv(u, k)
    assert relative_error(y, direct_sum(u, k)) < 1e-10
    y_ref, state_ref = long_conv_naive(u, k)
    assert relative_error(y, y_ref) < 1e-10
    torch.testing.assert_close(state, state_ref, rtol=0, atol=0)
    assert state.shape == (B, D, min(T, L - 1))


@pytest.mark.parametrize(("T", "L", "n_state"), [(13, 40, 0), (13, 40, 7), (24, 8, 7), (1, 30, 29)])
def test_outputs_states_and_grads_match_the_naive_op(T, L, n_state):
    inputs = make_inputs(T, L, n_state)
    y, state, grads = outputs_and_grads(long_conv, *inputs)
    y_ref, state_ref, grads_ref = outputs_and_grads(long_conv_naive, *inputs)
    assert relative_error(y, y_ref) < 1e-10
    torch.testing.assert_close(state, state_ref)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_output_at_t_ignores_later_inputs_and_taps_past_t():
    u, k, _ = make_inputs(30, 256)
    t0 = 11
    u2, k2 = u.clone(), k.clone()
    u2[:, t0 + 1 :] += 1.0
    k2[:, t0 + 1 :] += 1.0  # taps that only later outputs reach
    y, y2 = long_conv(u, k)[0], long_conv(u2, k2)[0]
    torch.testing.assert_close(y[:, : t0 + 1], y2[:, : t0 + 1], rtol=1e-12, atol=1e-12)
    assert (y[:, t0 + 1 :] - y2[:, t0 + 1 :]).abs().min() > 0


def test_no_tap_wraps_around_when_the_filter_outlasts_the_sequence():
    """A unit impulse at t = 0 returns the filter's first T taps, nothing of the taps after them."""
    T, L = 10, 64
    u = torch.zeros(1, T, D, dtype=torch.float64)
    u[:, 0] = 1.0
    k = torch.randn(D, L, dtype=torch.float64)
    torch.testing.assert_close(long_conv(u, k)[0][0], k[:, :T].t(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("split", [1, 6, 20])
def test_state_hand_over_and_decode_steps_equal_one_run(split):
    u, k, _ = make_inputs(25, 9)
    y_full, state_full = long_conv(u, k)
    y1, state = long_conv(u[:, :split], k)
    outs = [y1]
    for t in range(split, 25):
        y_t, state = long_conv_step(u[:, t : t + 1], k, state)
        outs.append(y_t)
    torch.testing.assert_close(torch.cat(outs, 1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_full)


def test_low_precision_inputs_accumulate_in_float32():
    u, k, _ = make_inputs(50, 50)
    y16 = long_conv(u.bfloat16(), k.bfloat16())[0]
    assert y16.dtype == torch.bfloat16
    assert relative_error(y16, long_conv(u.bfloat16().double(), k.bfloat16().double())[0]) < 1e-2


@pytest.mark.parametrize("n", [1, 2, 7, 17, 100, 127, 1000, 4097])
def test_fft_length_is_the_next_5_smooth_number(n):
    m = _fft_length(n)
    assert m >= n
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    assert m == 1
    smooth = [x for x in range(n, _fft_length(n) + 1) if _fft_length(x) == x]
    assert smooth[0] == _fft_length(n)


def test_decode_step_needs_only_the_taps_it_uses_when_told_the_filter_length():
    u, k, _ = make_inputs(12, 8)
    state = u.new_zeros(B, D, 0)
    for t in range(12):
        y_t, state = long_conv_step(u[:, t : t + 1], k[:, : state.shape[2] + 1], state, max_state=7)
        torch.testing.assert_close(y_t[:, 0], long_conv(u[:, : t + 1], k)[0][:, -1], rtol=1e-10, atol=1e-10)
    assert state.shape == (B, D, 7)
