"""The probe contract (`arch.probe`) of the softmax attention blocks: Attention with each of its options,
MoH and MLA. mix(attention_matrix(x)) is pre_projection(x), forward is post(pre_projection(x)) with the
head mask in between, step applies the same mask, and queries_keys gives the q and k of the scores."""

from __future__ import annotations

import pytest
import torch

from arch.blocks.attention import Attention
from arch.blocks.mla import MLA
from arch.blocks.moh import MoH
from arch.probe import mix, probeable
from tests.helpers.properties import decode

D, T = 32, 12
OPTIONS = {
    "plain": dict(),
    "gqa": dict(n_kv_heads=2),
    "mqa_bias": dict(n_kv_heads=1, bias=True),
    "window": dict(window=3),
    "window_gqa": dict(window=5, n_kv_heads=2),
    "no_position": dict(position="none"),
    "qk_norm": dict(qk_norm=True),
    "rope_fraction": dict(rope_fraction=0.5),
    "kv_shift_gqa": dict(kv_shift=True, n_kv_heads=2),
    "temperature_per_head": dict(temperature="per_head"),
    "temperature_query_position": dict(temperature="query_position"),
    "forget_gate": dict(forget_gate=True),
    "forget_gate_window_gqa": dict(forget_gate=True, window=4, n_kv_heads=2),
    "output_gate": dict(output_gate=True),
    "qkv_conv": dict(qkv_conv=3),
    "sigmoid": dict(score="sigmoid", sigmoid_bias=-1.0),
    "sigmoid_window_gqa": dict(score="sigmoid", window=4, n_kv_heads=2),
    "differential": dict(score="differential"),
    "differential_window_gqa": dict(score="differential", window=3, n_kv_heads=2),
    "differential_output_gate_bias": dict(score="differential", output_gate=True, bias=True),
    "sink": dict(sink="learnable"),
    "sink_forget_gate_gqa": dict(sink="learnable", forget_gate=True, n_kv_heads=2),
    "cope": dict(position="cope", cope_positions=8),
    "cope_gqa": dict(position="cope", cope_positions=8, n_kv_heads=2),
    "selective": dict(selective=True),
    "selective_budget_gqa": dict(selective=True, selective_budget=4, n_kv_heads=2),
    "mta_kernel": dict(mta_kernel=[2, 3]),
    "mta_head_mix": dict(mta_head_mix=True),
    "mta_both_gqa": dict(mta_kernel=[3, 2], mta_head_mix=True, n_kv_heads=2),
    "combined": dict(qk_norm=True, kv_shift=True, output_gate=True, n_kv_heads=2, temperature="query_position", qkv_conv=2),
    "moh": "moh",
    "moh_gqa_window": "moh_gqa_window",
    "mla": "mla",
    "mla_q_rank": "mla_q_rank",
}
# rows of A that do not sum to 1: a sink takes mass, sigmoid is not normalised, differential is p1 - lambda p2
UNNORMALISED = ("sink", "sigmoid", "differential")


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    opts = OPTIONS[name]
    if opts == "moh":
        block = MoH(D, 1, n_heads=4, n_shared=1, top_k=2)
    elif opts == "moh_gqa_window":
        block = MoH(D, 1, n_heads=4, n_shared=1, top_k=2, n_kv_heads=2, window=3)
    elif opts == "mla":
        block = MLA(D, 0, n_heads=4)
    elif opts == "mla_q_rank":
        block = MLA(D, 0, n_heads=4, q_rank=16, rope_dim=4, v_dim=6)
    else:
        block = Attention(D, 1, n_heads=4, **opts)
    block = block.double()
    with torch.no_grad():  # away from the identity inits, so every option acts
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def post(block, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """What follows pre_projection, written out: differential's head norm, MoH's gates, the output gate,
    the output projection."""
    if getattr(block, "maps", 1) == 2:
        o = block.diff_norm(o) * (1 - block.lambda_init)
    if isinstance(block, MoH):
        o = o * block.gates(x)[..., None]
    o = o.flatten(2)
    if getattr(block, "g_proj", None) is not None:
        o = o * torch.sigmoid(block.g_proj(x))
    return block.out_proj(o)


@pytest.mark.parametrize("name", OPTIONS)
def test_mix_of_the_attention_matrix_is_the_pre_projection_output(name):
    block, x = make(name), inputs()
    assert probeable(block)
    with torch.no_grad():
        a, v = block.attention_matrix(x)
        o = block.pre_projection(x)
    assert a.shape == (2, 4, T, T) and v.shape[:3] == (2, T, 4) and o.shape == v.shape
    torch.testing.assert_close(mix(a, v), o, rtol=1e-10, atol=1e-10)
    assert (torch.triu(a, diagonal=1) == 0).all(), "A attends to future tokens"
    rows = a.sum(-1)
    if not any(word in name for word in UNNORMALISED):
        torch.testing.assert_close(rows, torch.ones_like(rows), rtol=1e-12, atol=1e-12)
        assert (a >= 0).all()
    elif "sink" in name:
        assert (rows < 1).all() and (rows > 0).all() and (a >= 0).all()
    elif "differential" in name:
        lam = block.lambda_().double()
        torch.testing.assert_close(rows, torch.full_like(rows, 1.0) - lam, rtol=1e-10, atol=1e-10)
    # and forward is post(pre_projection)
    with torch.no_grad():
        torch.testing.assert_close(block(x), post(block, x, o), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPTIONS)
def test_a_head_mask_of_ones_changes_nothing(name):
    block, x = make(name), inputs()
    with torch.no_grad():
        plain = block(x)
        block.head_mask = torch.ones(4, dtype=torch.float64)
        assert torch.equal(block(x), plain)


@pytest.mark.parametrize(
    "name", ["plain", "mqa_bias", "output_gate", "differential", "differential_output_gate_bias", "sink", "selective", "moh", "mla"]
)
def test_masking_every_head_leaves_the_output_projection_of_zero(name):
    block, x = make(name), inputs()
    block.head_mask = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        expected = block.out_proj(torch.zeros(*x.shape[:2], block.out_proj.in_features, dtype=x.dtype))
    assert torch.equal(y, expected)
    if block.out_proj.bias is None:
        assert (y == 0).all()


@pytest.mark.parametrize("name", OPTIONS)
def test_masking_one_head_is_zeroing_its_slice_of_the_pre_projection_output(name):
    block, x = make(name), inputs()
    with torch.no_grad():
        o = block.pre_projection(x)
        o[:, :, 2] = 0
        expected = post(block, x, o)
        block.head_mask = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
        torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPTIONS)
def test_step_applies_the_head_mask_as_forward_does(name):
    block, x = make(name), inputs()
    block.head_mask = torch.tensor([0.5, 0.0, 1.0, -2.0], dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        stepped, _ = decode(block, x)
        block.head_mask = None
        unmasked = block(x)
    torch.testing.assert_close(stepped, full, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(full, unmasked)


def test_a_float_mask_takes_gradients_for_head_importance():
    block, x = make("gqa"), inputs()
    block.head_mask = torch.ones(4, dtype=torch.float64, requires_grad=True)
    block(x).square().sum().backward()
    o = block.pre_projection(x).detach().requires_grad_()
    post(block, x, o).square().sum().backward()
    # d loss / d m_h = sum over h's slice of o . d loss / d o at m = 1
    torch.testing.assert_close(block.head_mask.grad, (o * o.grad).sum((0, 1, 3)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "gqa",
        "window",
        "no_position",
        "qk_norm",
        "rope_fraction",
        "kv_shift_gqa",
        "temperature_per_head",
        "temperature_query_position",
        "qkv_conv",
        "combined",
        "moh_gqa_window",
    ],
)
def test_queries_keys_are_what_the_softmax_scores_read(name):
    block, x = make(name), inputs()
    with torch.no_grad():
        q, k = block.queries_keys(x)
        a, _ = block.attention_matrix(x)
    assert q.shape == (2, T, 4, block.head_dim) and k.shape == (2, T, block.n_kv_heads, block.head_dim)
    k = k.repeat_interleave(4 // k.shape[2], dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / block.head_dim**0.5
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    visible = (j <= i) if block.window is None else (j <= i) & (i - j < block.window)
    torch.testing.assert_close(scores.masked_fill(~visible, float("-inf")).softmax(-1), a, rtol=1e-12, atol=1e-12)


def test_queries_keys_of_differential_attention_give_its_two_maps():
    block, x = make("differential_window_gqa"), inputs()
    with torch.no_grad():
        q, k = block.queries_keys(x)
        a, _ = block.attention_matrix(x)
    assert q.shape == (2, T, 4 * 2, block.head_dim) and k.shape == (2, T, 2 * 2, block.head_dim)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    visible = (j <= i) & (i - j < block.window)

    def probs(m):  # map m of every head; heads ordered [head, map]
        qm, km = q[:, :, m::2], k[:, :, m::2].repeat_interleave(2, dim=2)
        return (torch.einsum("bthd,bshd->bhts", qm, km) / block.head_dim**0.5).masked_fill(~visible, float("-inf")).softmax(-1)

    torch.testing.assert_close(probs(0) - block.lambda_().double() * probs(1), a, rtol=1e-12, atol=1e-12)


def test_mla_queries_keys_are_what_its_scores_read():
    block, x = make("mla_q_rank"), inputs()
    with torch.no_grad():
        q, k = block.queries_keys(x)
        a, v = block.attention_matrix(x)
    assert q.shape == k.shape == (2, T, 4, block.nope_dim + block.rope_dim) and v.shape == (2, T, 4, 6)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    torch.testing.assert_close(scores.masked_fill(~causal, float("-inf")).softmax(-1), a, rtol=1e-12, atol=1e-12)
