"""MoA and MoH against multi-head attention in float64: identical MoA experts with one selected (gate 1)
are attention; MoH with every head on and uniform router outputs is attention; the selected-heads path
of MoA equals computing every expert and zeroing the unselected; auxiliary losses and load stats.
Causality and step == forward for both run in tests/blocks/test_contract.py."""

import pytest
import torch

from arch.blocks.attention import Attention
from arch.blocks.moa import MoA
from arch.blocks.moh import MoH

D = 32


def randomised(module):
    torch.manual_seed(1)
    module = module.double()
    for p in module.parameters():
        p.data.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("kv", ["shared", "separate"])
@pytest.mark.parametrize("heads,kv_heads", [(1, 1), (4, 2)])
def test_moa_with_identical_experts_and_one_selected_is_attention(kv, heads, kv_heads):
    attn = randomised(Attention(D, 0, n_heads=heads, n_kv_heads=kv_heads, head_dim=8))
    moa = randomised(MoA(D, 0, n_experts=3, top_k=1, expert_heads=heads, head_dim=8, n_kv_heads=kv_heads, kv=kv, normalize=True))
    with torch.no_grad():
        moa.q_proj.weight.copy_(attn.q_proj.weight.repeat(3, 1))
        moa.out_proj.weight.copy_(attn.out_proj.weight.repeat(1, 3))
        moa.kv_proj.weight.copy_(attn.kv_proj.weight.repeat(3 if kv == "separate" else 1, 1))
    x = torch.randn(2, 13, D, dtype=torch.float64)
    torch.testing.assert_close(moa(x), attn(x))


def test_moa_selected_heads_equal_every_expert_with_unselected_gated_to_zero():
    moa = randomised(MoA(D, 0, n_experts=4, top_k=2, expert_heads=2, head_dim=8, n_kv_heads=2))
    x = torch.randn(2, 11, D, dtype=torch.float64)
    b, t = x.shape[:2]
    q, k, v = moa._project(x, range(t))
    weights, experts = moa._route(x)
    gates = torch.zeros(b, t, 4, dtype=x.dtype).scatter(-1, experts, weights)
    expected = 0
    for e in range(4):  # each expert as an attention of its own heads over the shared K/V
        from arch.ops import causal_attention

        o = causal_attention(q[:, :, e], k, v)
        expected = expected + gates[:, :, e, None] * (o.flatten(2) @ moa.out_proj.weight[:, e * 16 : (e + 1) * 16].T)
    torch.testing.assert_close(moa(x), expected)


def test_moa_soft_routing_uses_every_expert():
    moa = randomised(MoA(D, 0, n_experts=3, top_k=3, head_dim=8))
    assert moa.inactive_params() == 0
    weights, experts = moa._route(torch.randn(1, 5, D, dtype=torch.float64))
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 5, dtype=torch.float64))  # softmax over all


def test_moa_router_starts_at_zero_and_losses_are_logged_in_training():
    moa = MoA(D, 2, n_experts=4, top_k=2, head_dim=8)
    moa.init_weights()
    assert moa.router.proj.weight.abs().sum() == 0
    moa.train()
    moa(torch.randn(1, 6, D))
    assert set(moa.aux_loss) == {"moa_balance", "moa_z"}
    assert "moa/load_max_over_mean/layer2" in moa.stats


def test_moa_state_counts_separate_kv_per_expert():
    shared = MoA(D, 0, n_experts=4, top_k=2, head_dim=8, n_kv_heads=1)
    separate = MoA(D, 0, n_experts=4, top_k=2, head_dim=8, n_kv_heads=1, kv="separate")
    assert separate.state_size(10) == 4 * shared.state_size(10) == 4 * 2 * 8 * 10


def test_moh_with_every_head_on_and_uniform_routers_is_attention():
    attn = randomised(Attention(D, 0, n_heads=4, n_kv_heads=2))
    moh = randomised(MoH(D, 0, n_heads=4, n_shared=1, top_k=3, n_kv_heads=2))
    with torch.no_grad():
        for name in ("q_proj", "kv_proj", "out_proj"):
            getattr(moh, name).weight.copy_(getattr(attn, name).weight)
        for router in (moh.router, moh.shared_router, moh.mix_router):
            router.proj.weight.zero_()
    x = torch.randn(2, 10, D, dtype=torch.float64)
    torch.testing.assert_close(moh.gates(x), torch.ones(2, 10, 4, dtype=torch.float64))
    torch.testing.assert_close(moh(x), attn(x))


def test_moh_gates_follow_the_reference_formula():
    moh = randomised(MoH(D, 0, n_heads=6, n_shared=2, top_k=2, head_dim=8))
    x = torch.randn(1, 3, D, dtype=torch.float64)
    g = moh.gates(x)[0]
    for t, tok in enumerate(x[0]):
        p = torch.softmax(moh.router.proj.weight @ tok, 0)
        keep = torch.topk(p, 2).indices
        routed = torch.zeros(4, dtype=torch.float64)
        routed[keep] = p[keep] / p[keep].sum() * 2
        shared = torch.softmax(moh.shared_router.proj.weight @ tok, 0) * 2
        a = 2 * torch.softmax(moh.mix_router.proj.weight @ tok, 0)
        torch.testing.assert_close(g[t], torch.cat([a[0] * shared, a[1] * routed]))
    assert ((g[:, 2:] > 0).sum(-1) == 2).all()  # two routed heads on per token


@pytest.mark.parametrize("bad", [{"n_shared": 8}, {"top_k": 7}, {"top_k": 0}])
def test_moh_refuses_impossible_head_counts(bad):
    with pytest.raises(ValueError):
        MoH(D, 0, **{"n_heads": 8, "n_shared": 2, "top_k": 3, **bad})


def test_mla_at_full_rank_without_rope_or_norm_is_attention_with_the_product_weights():
    from arch.blocks.mla import MLA

    mla = randomised(MLA(D, 0, n_heads=4, head_dim=8, kv_rank=D, rope_dim=0, latent_norm=False))
    attn = randomised(Attention(D, 0, n_heads=4, head_dim=8, position="none"))
    with torch.no_grad():
        up = mla.kv_up.weight.view(4, 16, D)  # per head [k_nope (8) | v (8)] rows
        k = (up[:, :8] @ mla.kv_down.weight).reshape(32, D)
        v = (up[:, 8:] @ mla.kv_down.weight).reshape(32, D)
        attn.q_proj.weight.copy_(mla.q_proj.weight)
        attn.kv_proj.weight.copy_(torch.cat([k, v]))
        attn.out_proj.weight.copy_(mla.out_proj.weight)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    torch.testing.assert_close(mla(x), attn(x))


def test_mla_caches_the_latent_and_rope_key_only():
    from arch.blocks.mla import MLA
    from tests.helpers.properties import decode, state_numel

    mla = randomised(MLA(D, 0, n_heads=4, head_dim=8, kv_rank=12, rope_dim=4, q_rank=16, v_dim=6))
    x = torch.randn(1, 7, D, dtype=torch.float64)
    with torch.no_grad():
        stepped, state = decode(mla, x)
        torch.testing.assert_close(stepped, mla(x))
    assert state["latent"].shape == (1, 7, 12) and state["k_rope"].shape == (1, 7, 4)
    assert state_numel(state) == mla.state_size(7) == 7 * 16  # attention would hold 7 * 2 * 4 * 8


@pytest.mark.parametrize("v_dim", [6, 20])  # narrower and wider than q.k (8 + 4)
def test_mla_values_of_another_width_than_qk_are_attended_exactly(v_dim):
    from arch.blocks.mla import MLA
    from arch.ops.attention import sliding_window_attention_naive

    mla = randomised(MLA(D, 0, n_heads=2, head_dim=8, rope_dim=4, kv_rank=10, v_dim=v_dim))
    x = torch.randn(1, 9, D, dtype=torch.float64)
    q = mla._queries(x, range(9))
    latent, k_rope = mla._latents(x, range(9))
    k_nope, v = mla.kv_up(latent).view(1, 9, 2, -1).split([8, v_dim], -1)
    k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(-1, -1, 2, -1)], -1)
    expected = mla.out_proj(sliding_window_attention_naive(q, k, v, scale=12**-0.5).flatten(2))
    torch.testing.assert_close(mla(x), expected, rtol=1e-10, atol=1e-10)
