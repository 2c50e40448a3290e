"""MoE: the dropless sorted computation equals a plain loop over tokens and their experts (float64),
for every routing option; the auxiliary losses equal their formulas; a capacity factor drops
assignments in token order and a fully dropped token leaves the layer as zero (the residual carries it)."""

import math

import pytest
import torch
import torch.nn.functional as F

from arch.blocks.moe import MoE
from arch.blocks.routing import balance_loss, expert_counts, load_stats, top_k, z_loss

D = 16


def build(**kw) -> MoE:
    torch.manual_seed(0)
    moe = MoE(D, 3, hidden=kw.pop("hidden", 24), **kw).double()
    for p in moe.parameters():
        p.data.normal_(0, 0.5)
    return moe


def loop_reference(moe: MoE, x: torch.Tensor, capacity: int | None = None) -> torch.Tensor:
    """Token by token: route with the formulas written out, then each chosen expert's SwiGLU."""
    flat = x.reshape(-1, D)
    w = moe.router.proj.weight
    out = torch.zeros_like(flat)
    used = [0] * moe.n_experts
    for i, tok in enumerate(flat):
        if moe.router.kind == "linear":
            logits = w @ tok
        else:
            q, k, v = (w @ tok).chunk(3)
            logits = torch.stack([(torch.softmax(q[a] * k, 0) * v).sum() for a in range(moe.n_experts)])
        probs = torch.softmax(logits, 0) if moe.score == "softmax" else torch.sigmoid(logits)
        chosen = sorted(range(moe.n_experts), key=lambda e: -probs[e].item())[: moe.top_k]
        weights = probs[chosen] / (probs[chosen].sum() if moe.normalize else 1)
        for e, g in zip(chosen, weights):
            if capacity is not None:
                if used[e] >= capacity:
                    continue
                used[e] += 1
            gate, up = (tok @ moe.in_proj.weight[e]).chunk(2)
            out[i] += g * ((F.silu(gate) * up) @ moe.out_proj.weight[e])
        if moe.shared is not None:
            out[i] += moe.shared(tok)
    return out.reshape(x.shape)


OPTIONS = [
    {},
    {"score": "sigmoid"},
    {"score": "sigmoid", "normalize": False},
    {"normalize": False, "top_k": 1},
    {"router": "attention"},
    {"router": "attention", "score": "sigmoid"},
    {"n_experts": 4, "top_k": 1, "granularity": 2, "n_shared": 1},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_dropless_equals_a_loop_over_experts(options):
    moe = build(**options)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    torch.testing.assert_close(moe(x), loop_reference(moe, x))


def test_fine_grained_experts_split_hidden_and_multiply_experts_and_top_k():
    moe = build(n_experts=4, top_k=2, granularity=2, hidden=32, n_shared=2)
    assert (moe.n_experts, moe.top_k, moe.hidden) == (8, 4, 16)
    assert moe.shared.out_proj.in_features == 32


def test_gradients_reach_the_router_and_every_used_expert():
    moe = build()
    moe.train()
    x = torch.randn(2, 16, D, dtype=torch.float64)
    y = moe(x)
    (y.square().sum() + sum(moe.aux_loss.values())).backward()
    assert moe.router.proj.weight.grad.abs().sum() > 0
    used = torch.unique(moe.route(x.reshape(-1, D))[1])
    assert (moe.in_proj.weight.grad[used].flatten(1).abs().sum(1) > 0).all()


def test_balance_loss_equals_its_formula_and_is_one_when_uniform():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    _, idx = top_k(probs, 1, normalize=False)  # experts 0, 0, 2, 0
    counts = expert_counts(idx, 3)
    assert counts.tolist() == [3, 0, 1]
    f = torch.tensor([3, 0, 1]) / 4
    p = probs.mean(0)
    assert balance_loss(probs, counts).item() == pytest.approx(3 * (f * p).sum().item())
    uniform = torch.full((6, 3), 1 / 3)
    assert balance_loss(uniform, torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(1.0)


def test_z_loss_equals_its_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = (math.log(math.exp(1) + math.exp(2) + math.exp(3)) ** 2 + math.log(3) ** 2) / 2
    assert z_loss(logits).item() == pytest.approx(expected)


def test_aux_losses_are_weighted_in_training_and_absent_in_eval():
    moe = build(balance_weight=0.5, z_weight=0.25)
    x = torch.randn(1, 10, D, dtype=torch.float64)
    moe.train()
    moe(x)
    _, experts, logits, probs = moe.route(x.reshape(-1, D))
    counts = expert_counts(experts, moe.n_experts)
    torch.testing.assert_close(moe.aux_loss["moe_balance"], 0.5 * balance_loss(probs, counts))
    torch.testing.assert_close(moe.aux_loss["moe_z"], 0.25 * z_loss(logits))
    moe.eval()
    moe(x)
    assert moe.aux_loss == {}


def test_load_stats_name_the_layer_and_measure_max_over_mean():
    stats = load_stats(torch.tensor([6.0, 2.0, 0.0, 0.0]), "moe", 3)
    assert stats["moe/load_max_over_mean/layer3"].item() == pytest.approx(3.0)
    assert stats["moe/load/layer3/expert1"].item() == pytest.approx(0.25)


def test_capacity_drops_in_token_order_and_dropped_tokens_output_zero():
    moe = build(n_experts=4, top_k=1, capacity_factor=0.5)
    with torch.no_grad():  # route every token to expert 0: capacity ceil(0.5 * 8 * 1 / 4) = 1 token
        moe.router.proj.weight.zero_()
        moe.router.proj.weight[0] = 1.0
    x = torch.rand(1, 8, D, dtype=torch.float64) + 0.1
    y = moe(x)
    torch.testing.assert_close(y, loop_reference(moe, x, capacity=1))
    assert y[0, 0].abs().sum() > 0
    assert torch.equal(y[0, 1:], torch.zeros_like(y[0, 1:]))


def test_capacity_with_room_equals_dropless():
    dropless, capped = build(), build(capacity_factor=8.0)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    torch.testing.assert_close(capped(x), dropless(x))


@pytest.mark.parametrize("bad", [{"top_k": 9}, {"granularity": 0}, {"score": "tanh"}, {"capacity_factor": 0.0}, {"router": "mlp"}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        MoE(D, 0, **bad)


def _ddp_worker(rank: int, world: int, init_file: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        moe = build(n_experts=4, top_k=1)
        moe.train()
        torch.manual_seed(100 + rank)  # each rank its own tokens
        x = torch.randn(1, 6 + 4 * rank, D, dtype=torch.float64)
        moe(x)
        local = expert_counts(moe.route(x.reshape(-1, D))[1], 4, global_batch=False)
        results[rank] = (local, moe.stats["moe/load_max_over_mean/layer3"].item(), moe.aux_loss["moe_balance"].item())
    finally:
        dist.destroy_process_group()


def test_under_ddp_the_load_statistics_are_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        results = dict(results)
    total = results[0][0] + results[1][0]
    expected_load = (total / total.sum()).max().item() * 4
    assert not torch.equal(results[0][0], results[1][0])  # the ranks saw different routings ...
    for rank in (0, 1):  # ... and both report the load of the union
        assert results[rank][1] == pytest.approx(expected_load)


def test_the_grouped_gemm_path_equals_one_matmul_per_expert():
    from arch.blocks.moe import Experts, grouped_mm_supported

    experts = Experts(3, 16, 8)
    x = torch.randn(10, 16)
    counts = [4, 0, 6]
    assert grouped_mm_supported(x, experts.weight)  # float32 on CPU
    expected = torch.cat([x[:4] @ experts.weight[0], x[4:] @ experts.weight[2]])
    torch.testing.assert_close(experts(x, counts), expected)
    assert not grouped_mm_supported(x.double(), experts.weight.double())  # float64 takes the loop
    torch.testing.assert_close(experts.double()(x.double(), counts), expected.double(), rtol=1e-5, atol=1e-5)
