import math

import pytest
import torch

from arch.blocks.attention import Attention
from arch.ops.attention import causal_attention
from tests.helpers.properties import assert_causal, assert_decode_matches_forward

D = 32
VARIANTS = {
    "full": dict(n_heads=4),
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
    "sliding_window": dict(n_heads=4, window=5),
    "no_position": dict(n_heads=4, position="none"),
    "window_gqa": dict(n_heads=4, n_kv_heads=2, window=1),
}


def make(variant: str) -> Attention:
    return Attention(D, 0, **VARIANTS[variant]).double()


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_is_causal(variant):
    assert_causal(make(variant), D)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_decode_matches_forward(variant):
    assert_decode_matches_forward(make(variant), D)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_state_size_counts_the_kv_cache(variant):
    block = make(variant)
    kv, hd, w = block.n_kv_heads, block.head_dim, VARIANTS[variant].get("window")
    for t in (1, 7, 100):
        assert block.state_size(t) == 2 * kv * hd * (t if w is None else min(t, w))


def naive_attention(q, k, v, window=None):
    """Explicit softmax over the visible keys, one query at a time (the oracle)."""
    b, t, h, d = q.shape
    rep = h // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    out = torch.zeros_like(q)
    for i in range(t):
        lo = 0 if window is None else max(0, i - window + 1)
        s = torch.einsum("bhd,bshd->bhs", q[:, i], k[:, lo : i + 1]) / d**0.5
        out[:, i] = torch.einsum("bhs,bshd->bhd", s.softmax(-1), v[:, lo : i + 1])
    return out


@pytest.mark.parametrize("window", [None, 1, 4])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_causal_attention_matches_explicit_softmax(window, kv_heads):
    q = torch.randn(2, 9, 4, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, 9, kv_heads, 8, dtype=torch.float64).unbind(1)
    torch.testing.assert_close(causal_attention(q, k, v, window=window), naive_attention(q, k, v, window))


def test_flash_backend_on_cpu_is_a_clear_error():
    q = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    with pytest.raises((RuntimeError, ValueError), match="flash_attn"):
        causal_attention(q, q, q, backend="flash_attn")


def test_gqa_needs_divisible_heads():
    with pytest.raises(ValueError, match="multiple"):
        Attention(D, 0, n_heads=4, n_kv_heads=3)


def test_rope_tables_cached_in_inference_mode_serve_a_later_training_forward():
    from arch.ops import rotary_embedding

    x = torch.randn(1, 7, 2, 8)
    with torch.inference_mode():
        rotary_embedding(x, range(7))  # validation fills the cache first
    leaf = x.clone().requires_grad_()
    rotary_embedding(leaf, range(7)).sum().backward()  # the cached tables can be saved for backward
    torch.testing.assert_close(rotary_embedding(x, range(7)), rotary_embedding(x, torch.arange(7)), rtol=0, atol=0)


def _pair(**options):
    """(plain attention, attention with options) with the same projection weights, float64."""
    torch.manual_seed(3)
    plain = Attention(32, 0, n_heads=4, n_kv_heads=2).double()
    varied = Attention(32, 0, n_heads=4, n_kv_heads=2, **options).double()
    varied.load_state_dict(plain.state_dict(), strict=False)
    return plain, varied


@pytest.mark.parametrize(
    "options,neutral",
    [
        ({"kv_shift": True}, lambda m: m.kv_shift.data.copy_(torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]]).permute(1, 0, 2).expand(2, 2, 2))),
        ({"temperature": "per_head"}, lambda m: m.log_temperature.data.zero_()),
        ({"temperature": "query_position"}, lambda m: (m.temperature_proj.weight.data.zero_(), m.temperature_position.data.zero_())),
        ({"forget_gate": True}, lambda m: (m.forget_proj.weight.data.zero_(), m.forget_proj.bias.data.fill_(1e4))),
        ({"rope_fraction": 1.0}, lambda m: None),
    ],
    ids=["kv_shift_1_0", "temperature_1", "query_temperature_1", "forget_gate_open", "rope_fraction_1"],
)
def test_options_at_their_neutral_values_are_plain_attention(options, neutral):
    plain, varied = _pair(**options)
    neutral(varied)
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    torch.testing.assert_close(varied(x), plain(x), rtol=1e-10, atol=1e-10)


def test_kv_shift_mixes_each_key_and_value_with_the_previous_tokens():
    plain, shifted = _pair(kv_shift=True, position="none")
    plain.position = "none"
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    q, k, v = plain._qkv(x, range(6))
    w = shifted.kv_shift
    prev = lambda t: torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], 1)  # noqa: E731
    k2 = w[0, 0][:, None] * k + w[0, 1][:, None] * prev(k)
    v2 = w[1, 0][:, None] * v + w[1, 1][:, None] * prev(v)
    from arch.ops.attention import sliding_window_attention_naive

    expected = plain.out_proj(sliding_window_attention_naive(q, k2, v2).flatten(2))
    torch.testing.assert_close(shifted(x), expected, rtol=1e-10, atol=1e-10)
    assert torch.allclose(w[:, 0] + w[:, 1], torch.ones_like(w[:, 0]))  # init: a2 = 1 - a1


def test_forget_gate_adds_the_cumulative_log_forget_to_the_logits():
    from arch.ops.attention import sliding_window_attention_naive

    plain, fox = _pair(forget_gate=True, position="none")
    plain.position = "none"
    x = torch.randn(1, 8, 32, dtype=torch.float64)
    q, k, v = plain._qkv(x, range(8))
    log_f = torch.nn.functional.logsigmoid(fox.forget_proj(x))  # [B, T, H]
    bias = torch.zeros(1, 4, 8, 8, dtype=torch.float64)
    for i in range(8):
        for j in range(i + 1):
            bias[0, :, i, j] = log_f[0, j + 1 : i + 1].sum(0)
    expected = plain.out_proj(sliding_window_attention_naive(q, k, v, bias=bias).flatten(2))
    torch.testing.assert_close(fox(x), expected, rtol=1e-10, atol=1e-10)


def test_qkv_conv_with_its_identity_init_is_plain_attention_and_filters_once_trained():
    plain, filtered = _pair(qkv_conv=3)
    filtered.init_weights()  # identity taps
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    torch.testing.assert_close(filtered(x), plain(x), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        filtered.qkv_conv[:, 0] = 0.5  # the token two steps back now leaks into q, k, v
    assert (filtered(x) - plain(x)).abs().max() > 1e-3


@pytest.mark.parametrize("window", [None, 5])
def test_sigmoid_attention_equals_its_naive_twin(window):
    from arch.ops.attention import sigmoid_attention, sigmoid_attention_naive

    torch.manual_seed(0)
    q = torch.randn(2, 9, 4, 8, dtype=torch.float64)
    k, v = (torch.randn(2, 9, 2, 8, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(
        sigmoid_attention(q, k, v, bias=-1.5, window=window), sigmoid_attention_naive(q, k, v, bias=-1.5, window=window)
    )


def test_a_sink_at_minus_infinity_is_plain_attention_and_at_zero_takes_mass():
    plain, sunk = _pair(sink="learnable")
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    sunk.sink.data.fill_(-1e4)
    torch.testing.assert_close(sunk(x), plain(x), rtol=1e-10, atol=1e-10)
    sunk.sink.data.zero_()  # one more exp(0) in every denominator: outputs shrink toward 0
    assert sunk(x).norm() < plain(x).norm()


@pytest.mark.parametrize(
    "bad",
    [
        {"sink": "learnable", "window": 8},
        {"score": "sigmoid", "sink": "learnable"},
        {"score": "sigmoid", "forget_gate": True},
        {"selective_budget": 8},
        {"selective": True, "selective_budget": 1},
    ],
)
def test_incompatible_options_are_refused_with_the_reason(bad):
    with pytest.raises(ValueError, match="sink|forget_gate|selective_budget"):
        Attention(32, 0, **bad)


def test_differential_with_lambda_zero_is_attention_on_the_first_maps_then_the_head_norm():
    from arch.ops.attention import sliding_window_attention_naive

    torch.manual_seed(4)
    diff = Attention(32, 3, n_heads=2, score="differential").double()
    for p in diff.parameters():
        p.data.normal_(0, 0.3)
    with torch.no_grad():  # lambda = exp(0) - exp(0) + lambda_init - lambda_init: pick lq2.lk2 so that lambda = 0
        diff.lambdas.zero_()
        diff.lambda_init = 0.0
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    q, k, v, _ = diff._project(x)
    q, k = diff._finish_qk(q, k, range(9))
    q1, k1 = q[:, :, 0::2], k[:, :, 0::2]
    o = diff.diff_norm(sliding_window_attention_naive(q1, k1, v))
    torch.testing.assert_close(diff(x), diff.out_proj(o.flatten(2)), rtol=1e-10, atol=1e-10)
    assert diff.head_dim == 8 and v.shape[-1] == 16  # d_model / (2 heads x 2 maps), values twice as wide


def test_differential_lambda_init_follows_the_depth_schedule():
    import math

    for layer in (0, 5):
        block = Attention(32, layer, n_heads=2, score="differential")
        assert block.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * layer))


def test_cope_positions_with_every_gate_open_are_the_relative_counts():
    from arch.ops.attention import cope_bias

    torch.manual_seed(0)
    t, d, npos = 6, 4, 10
    q = torch.randn(1, t, 1, d, dtype=torch.float64)
    table = torch.randn(d, npos, dtype=torch.float64)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    logits = torch.full((1, 1, t, t), 1e4, dtype=torch.float64).masked_fill(~causal, float("-inf"))  # sigmoid = 1
    bias = cope_bias(q, logits, table)
    for i in range(t):
        for j in range(i + 1):  # p_ij = i - j + 1 gated tokens from j to i
            assert bias[0, 0, i, j].item() == pytest.approx((q[0, i, 0] @ table[:, i - j + 1]).item())


def test_cope_with_a_zero_table_is_attention_without_positions():
    plain, cope = _pair(position="cope")
    plain.position = "none"
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    torch.testing.assert_close(cope(x), plain(x), rtol=1e-10, atol=1e-10)


def test_selective_attention_equals_its_explicit_formula_and_without_selection_is_plain():
    from arch.ops.attention import selective_attention, sliding_window_attention_naive

    torch.manual_seed(2)
    t = 8
    q, k, v = (torch.randn(1, t, 2, 4, dtype=torch.float64) for _ in range(3))
    scale = 0.5
    logits = torch.einsum("bthd,bshd->bhts", q, k) * scale
    f = torch.zeros(t, t, dtype=torch.float64)  # F_ij = sum_{i' < i} S_i'j
    for i in range(t):
        for j in range(t):
            f[i, j] = sum(max(logits[0, 0, p, j].item(), 0.0) for p in range(i) if 0 < j < p and j <= p)
    expected = torch.zeros_like(q)
    for h in range(2):
        for i in range(t):
            w = torch.softmax(logits[0, h, i, : i + 1] - f[i, : i + 1], 0)
            expected[0, i, h] = w @ v[0, : i + 1, h]
    torch.testing.assert_close(selective_attention(q, k, v, scale=scale), expected, rtol=1e-10, atol=1e-10)
    q0 = q.clone()
    q0[:, :, 0] = 0  # head 0 selects nothing: plain attention
    torch.testing.assert_close(selective_attention(q0, k, v, scale=scale), sliding_window_attention_naive(q0, k, v, scale=scale))


def test_mta_with_delta_kernels_and_identity_mixing_is_plain_attention():
    plain, mta = _pair(mta_kernel=[3, 5], mta_head_mix=True)
    mta.init_weights()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    torch.testing.assert_close(mta(x), plain(x), rtol=1e-10, atol=1e-10)


def test_mta_convolution_equals_its_explicit_sum():
    from arch.ops.attention import mta_attention

    torch.manual_seed(5)
    t, h, cq, ck = 7, 2, 3, 3
    q, k, v = (torch.randn(1, t, h, 4, dtype=torch.float64) for _ in range(3))
    kernel = torch.randn(h, cq, ck, dtype=torch.float64)
    mix = torch.randn(h, h, dtype=torch.float64)
    scores = torch.einsum("bthd,bshd->bhts", q, k)[0] * 0.5
    scores = scores * torch.ones(t, t, dtype=torch.float64).tril()  # Mask_0
    conv = torch.zeros_like(scores)
    for g in range(h):
        for i in range(t):
            for j in range(t):
                for a in range(cq):
                    for b in range(ck):
                        ii, jj = i - (cq - 1) + a, j - (ck - 1) // 2 + b
                        if 0 <= ii < t and 0 <= jj < t:
                            conv[g, i, j] += kernel[g, a, b] * scores[g, ii, jj]
    mixed = torch.einsum("hg,gts->hts", mix, conv).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    expected = torch.einsum("hts,shd->thd", mixed.softmax(-1), v[0])
    torch.testing.assert_close(mta_attention(q, k, v, kernel, mix, scale=0.5)[0], expected, rtol=1e-10, atol=1e-10)


def test_query_temperature_scales_each_query_by_its_token_and_log_position_term():
    from arch.ops.attention import sliding_window_attention_naive

    plain, tempered = _pair(temperature="query_position")
    with torch.no_grad():
        tempered.temperature_proj.weight.normal_(0, 0.3)
        tempered.temperature_position.copy_(torch.tensor([0.5, -0.2, 0.0, 1.0]))
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    q, k, v = plain._qkv(x, range(10))
    tau = torch.empty(2, 10, 4, dtype=torch.float64)
    for t in range(10):
        for h in range(4):
            w_h, beta_h = tempered.temperature_proj.weight[h], tempered.temperature_position[h]
            tau[:, t, h] = 1 + torch.tanh(x[:, t] @ w_h) + beta_h * math.log(1 + t)
    expected = plain.out_proj(sliding_window_attention_naive(q * tau[..., None], k, v).flatten(2))
    torch.testing.assert_close(tempered(x), expected, rtol=1e-10, atol=1e-10)


def _held_by_eviction(f: torch.Tensor, budget: int) -> list[list[set]]:
    """The context-budget rule written with Python sets, one query at a time: token i joins at query i;
    over budget, drop the held token (not the first, not i) with the largest F[i, j], earliest on ties."""
    out = []
    for b in range(f.shape[0]):
        held, rows = set(), []
        for i in range(f.shape[1]):
            held.add(i)
            if len(held) > budget:
                candidates = sorted(j for j in held if j not in (0, i))
                drop = max(candidates, key=lambda j: (f[b, i, j].item(), -j))
                held.remove(drop)
            rows.append(set(held))
        out.append(rows)
    return out


def test_selective_budget_holds_what_the_eviction_rule_holds_and_a_large_budget_changes_nothing():
    from arch.ops.attention import selective_attention, selective_keep

    torch.manual_seed(5)
    f = torch.rand(3, 12, 12, dtype=torch.float64)
    f[:, :, 5] = 0.0  # ties: the earliest of equal masks goes first
    f[:, :, 7] = 0.0
    held = selective_keep(f, 4)
    for b, rows in enumerate(_held_by_eviction(f, 4)):
        for i, row in enumerate(rows):
            assert set(torch.nonzero(held[b, i]).flatten().tolist()) == row
    assert held.sum(-1).max() == 4
    q, k, v = (torch.randn(2, 10, 2, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(selective_attention(q, k, v, budget=10), selective_attention(q, k, v), rtol=0, atol=0)
    assert not torch.allclose(selective_attention(q, k, v, budget=3), selective_attention(q, k, v))


def test_selective_budget_decode_keeps_at_most_the_budget_in_its_cache():
    block = Attention(32, 0, n_heads=4, selective=True, selective_budget=5).double()
    state = block.init_state(2, dtype=torch.float64)
    for _ in range(9):
        _, state = block.step(torch.randn(2, 1, 32, dtype=torch.float64), state)
    assert state["k"].shape[1] == state["v"].shape[1] == state["select"].shape[1] == 5
    assert block.state_size(9) == block.state_size(5) < Attention(32, 0, n_heads=4, selective=True).state_size(9)
