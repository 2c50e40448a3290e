"""causal_conv1d: the conv1d path agrees with the rolling-window recurrence and hands over its state."""

import pytest
import torch
import torch.nn.functional as F

from arch.ops import causal_conv1d, causal_conv1d_naive
from tests.helpers.numerics import outputs_and_grads

B, D = 2, 5


def make_inputs(T, K, with_bias=True, dtype=torch.float64):
    x, weight = torch.randn(B, T, D, dtype=dtype), torch.randn(D, K, dtype=dtype)
    bias = torch.randn(D, dtype=dtype) if with_bias else None
    return x, weight, bias, torch.randn(B, D, K - 1, dtype=dtype)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 3, 17])
def test_conv_matches_naive_outputs_state_and_grads(T, K, with_bias, activation):
    inputs = make_inputs(T, K, with_bias)
    y, state, grads = outputs_and_grads(causal_conv1d, *inputs, activation=activation)
    y_ref, state_ref, grads_ref = outputs_and_grads(causal_conv1d_naive, *inputs, activation=activation)
    assert y.shape == (B, T, D) and state.shape == (B, D, K - 1)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state, state_ref)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref)


def test_output_is_the_written_sum_over_the_last_k_inputs():
    """y_t = sum_j w[:, j] x_{t-K+1+j} + b, with zeros before the sequence start."""
    x, weight, bias, _ = make_inputs(6, 3)
    y, _ = causal_conv1d(x, weight, bias)
    padded = F.pad(x, (0, 0, 2, 0))
    expected = sum(weight[:, j] * padded[:, j : j + 6] for j in range(3)) + bias
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("split", [1, 2, 9])
def test_state_hand_over_equals_one_run(split):
    x, weight, bias, _ = make_inputs(12, 4)
    y_full, state_full = causal_conv1d(x, weight, bias, activation="silu")
    y1, state1 = causal_conv1d(x[:, :split], weight, bias, activation="silu")
    y2, state2 = causal_conv1d(x[:, split:], weight, bias, activation="silu", initial_state=state1)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full)
    torch.testing.assert_close(state2, state_full)


def test_token_by_token_decode_equals_one_run():
    x, weight, bias, _ = make_inputs(7, 3)
    y_full, _ = causal_conv1d(x, weight, bias)
    state, steps = None, []
    for t in range(7):
        y_t, state = causal_conv1d(x[:, t : t + 1], weight, bias, initial_state=state)
        steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y_full)


def test_unknown_activation_is_an_error():
    x, weight, bias, _ = make_inputs(4, 3)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, weight, bias, activation="gelu")


def test_kernel_backend_on_cpu_raises_a_clear_error():
    x, weight, bias, _ = make_inputs(4, 3, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="backend='causal_conv1d'"):
        causal_conv1d(x, weight, bias, backend="causal_conv1d")
