"""gated_linear_attention: the chunked path agrees with the token-by-token recurrence."""

import pytest
import torch
import torch.nn.functional as F

from arch.ops import gated_linear_attention, gated_linear_attention_naive, gla_step
from tests.helpers.numerics import outputs_and_grads, relative_error

B, H, DK, DV = 2, 2, 8, 6
DECAYS = ["none", "scalar", "vector"]


def make_inputs(T, decay, dtype=torch.float64, H=H, Dk=DK, Dv=DV):
    q, k = torch.randn(B, T, H, Dk, dtype=dtype), torch.randn(B, T, H, Dk, dtype=dtype)
    v = torch.randn(B, T, H, Dv, dtype=dtype)
    decay_shape = {"none": None, "scalar": (B, T, H), "vector": (B, T, H, Dk)}[decay]
    log_decay = None if decay_shape is None else F.logsigmoid(torch.randn(decay_shape, dtype=dtype))
    initial_state = torch.randn(B, H, Dk, Dv, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return q, k, v, log_decay, initial_state


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("T", [1, 7, 64, 65, 200])
@pytest.mark.parametrize("decay", DECAYS)
def test_chunked_matches_naive_outputs_state_and_grads(decay, T, chunk_size):
    inputs = make_inputs(T, decay)
    o, state, grads = outputs_and_grads(gated_linear_attention, *inputs, chunk_size=chunk_size)
    o_ref, state_ref, grads_ref = outputs_and_grads(gated_linear_attention_naive, *inputs)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("split", [1, 37, 64])
@pytest.mark.parametrize("decay", DECAYS)
def test_state_hand_over_equals_one_run(decay, split):
    q, k, v, log_decay, _ = make_inputs(100, decay)
    o_full, state_full = gated_linear_attention(q, k, v, log_decay)

    def part(x, sl):
        return None if x is None else x[:, sl]

    first, second = slice(None, split), slice(split, None)
    o1, state1 = gated_linear_attention(q[:, first], k[:, first], v[:, first], part(log_decay, first))
    o2, state2 = gated_linear_attention(
        q[:, second], k[:, second], v[:, second], part(log_decay, second), initial_state=state1
    )
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_full)
    torch.testing.assert_close(state2, state_full)


@pytest.mark.parametrize(
    "decay, strength", [("vector", 1 / 16), ("vector", 20.0), ("scalar", 20.0), ("none", 0.0)]
)
def test_float32_long_and_strongly_decayed_sequences_stay_accurate(decay, strength):
    """T=4096 in float32, log-decay down to -20 per step: finite, and within 1e-4 of float64."""
    q, k, v, log_decay, initial_state = make_inputs(4096, decay, H=1, Dk=16, Dv=16)
    if decay != "none":
        log_decay = -strength * torch.rand_like(log_decay)  # uniform in [-strength, 0]
    o, state, grads = outputs_and_grads(gated_linear_attention, q.float(), k.float(), v.float(),
                                        None if log_decay is None else log_decay.float(), initial_state)
    o_ref, state_ref, grads_ref = outputs_and_grads(gated_linear_attention_naive, q, k, v, log_decay,
                                                    initial_state.double())
    assert o.dtype == torch.float32 and state.dtype == torch.float32
    assert all(x.isfinite().all() for x in (o, state, *grads))
    assert relative_error(o, o_ref) <= 1e-4
    assert relative_error(state, state_ref) <= 1e-4
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert relative_error(grad, grad_ref) <= 1e-4


def test_decay_of_minus_twenty_per_step_has_finite_gradients():
    q, k, v, log_decay, initial_state = make_inputs(130, "vector", dtype=torch.float32)
    log_decay = torch.full_like(log_decay, -20.0)
    o, state, grads = outputs_and_grads(gated_linear_attention, q, k, v, log_decay, initial_state)
    assert all(x.isfinite().all() for x in (o, state, *grads))


def test_low_precision_inputs_return_their_dtype_and_a_float32_state():
    q, k, v, log_decay, _ = make_inputs(33, "vector", dtype=torch.bfloat16)
    o, state = gated_linear_attention(q, k, v, log_decay)
    assert o.dtype == torch.bfloat16 and o.shape == (B, 33, H, DV)
    assert state.dtype == torch.float32 and state.shape == (B, H, DK, DV)


def test_scale_defaults_to_inverse_sqrt_key_dim():
    q, k, v, log_decay, _ = make_inputs(20, "vector")
    o_default, _ = gated_linear_attention(q, k, v, log_decay)
    o_explicit, _ = gated_linear_attention(q, k, v, log_decay, scale=DK**-0.5)
    torch.testing.assert_close(o_default, o_explicit)


@pytest.mark.parametrize("chunk_size", [4, 24, 48])
def test_any_chunk_size_gives_the_same_result(chunk_size):
    q, k, v, log_decay, initial_state = make_inputs(100, "vector")
    o, state = gated_linear_attention(q, k, v, log_decay, initial_state=initial_state, chunk_size=chunk_size)
    o_ref, state_ref = gated_linear_attention_naive(q, k, v, log_decay, initial_state=initial_state)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)


def test_chunk_size_must_be_positive():
    q, k, v, log_decay, _ = make_inputs(20, "vector")
    with pytest.raises(ValueError, match="chunk_size"):
        gated_linear_attention(q, k, v, log_decay, chunk_size=0)


def test_fla_backend_on_cpu_raises_a_clear_error():
    q, k, v, log_decay, _ = make_inputs(8, "vector", dtype=torch.float32)
    with pytest.raises(RuntimeError, match="backend='fla'"):
        gated_linear_attention(q, k, v, log_decay, backend="fla")


@pytest.mark.parametrize("decay", DECAYS)
def test_cpu_segments_match_the_recurrence_with_gradients(monkeypatch, decay):
    """A tiny segment budget cuts T=150 into segments of 64, 64 and 22 tokens (4 chunks of 16 each)."""
    import arch.ops.gla as gla

    monkeypatch.setattr(gla, "CPU_SEGMENT_ELEMENTS", 1)
    q = make_inputs(150, decay)[0]
    assert gla._segment_length(q, q, 16) == 64
    inputs = make_inputs(150, decay)
    o, state, grads = outputs_and_grads(gated_linear_attention, *inputs, chunk_size=16)
    o_ref, state_ref, grads_ref = outputs_and_grads(gated_linear_attention_naive, *inputs)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=1e-10, atol=1e-10)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decay", ["none", "scalar", "vector"])
def test_gla_step_continues_the_chunked_op(decay):
    torch.manual_seed(0)
    B, T, H, K, V = 2, 9, 3, 5, 4
    q, k = torch.randn(B, T, H, K, dtype=torch.float64), torch.randn(B, T, H, K, dtype=torch.float64)
    v = torch.randn(B, T, H, V, dtype=torch.float64)
    g = {"none": None, "scalar": -torch.rand(B, T, H, dtype=torch.float64), "vector": -torch.rand(B, T, H, K, dtype=torch.float64)}[decay]
    o, final = gated_linear_attention(q, k, v, g, scale=0.7)
    o_prefix, state = gated_linear_attention(q[:, :-1], k[:, :-1], v[:, :-1], None if g is None else g[:, :-1], scale=0.7)
    o_last, state = gla_step(q[:, -1:], k[:, -1:], v[:, -1:], None if g is None else g[:, -1:], state, 0.7)
    torch.testing.assert_close(o_last, o[:, -1:])
    torch.testing.assert_close(state, final)
