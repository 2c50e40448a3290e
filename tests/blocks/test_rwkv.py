import math

import pytest
import torch

from arch.blocks.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix, token_shift
from arch.blocks.rwkv7 import RWKV7TimeMix
from tests.helpers.properties import assert_decode_matches_forward, assert_model_decode_matches_forward

D = 32


def _open_outputs(block: torch.nn.Module) -> torch.nn.Module:
    """RWKV zero-initialises its output projections (and the channel mix's receptance): give them
    random weights so that outputs depend on the inputs."""
    with torch.no_grad():
        for name in ("out_proj", "r_proj"):
            if getattr(block, name, None) is not None and not getattr(block, name).weight.any():
                getattr(block, name).weight.normal_(std=0.3)
    return block


def test_token_shift_is_the_previous_token_and_the_state_before_the_first():
    x = torch.arange(6.0).view(1, 3, 2)
    torch.testing.assert_close(token_shift(x, None), torch.tensor([[[0.0, 0.0], [0.0, 1.0], [2.0, 3.0]]]))
    torch.testing.assert_close(token_shift(x, torch.tensor([[7.0, 8.0]]))[:, 0], torch.tensor([[7.0, 8.0]]))


@pytest.mark.parametrize("receptance", [True, False])
def test_channel_mix_reads_exactly_the_current_and_previous_token(receptance):
    torch.manual_seed(0)
    block = _open_outputs(RWKV6ChannelMix(D, receptance=receptance).double())
    with torch.no_grad():
        block.mu_k.uniform_(0.2, 0.8)
        if receptance:
            block.mu_r.uniform_(0.2, 0.8)
    x = torch.randn(1, 6, D, dtype=torch.float64)
    y = block(x)
    x2 = x.clone()
    x2[:, 2] += 1.0
    y2 = block(x2)
    changed = (y2 - y).abs().amax(-1)[0] > 1e-9
    assert changed.tolist() == [False, False, True, True, False, False]


@pytest.mark.parametrize("cls", [RWKV6TimeMix, RWKV7TimeMix])
def test_time_mix_first_output_sees_a_zero_previous_token(cls):
    torch.manual_seed(0)
    block = _open_outputs(cls(D, head_dim=8).double())
    x = torch.randn(2, 5, D, dtype=torch.float64)
    state = block.init_state(2, None, torch.float64)
    state["last"] = torch.randn(2, D, dtype=torch.float64)
    y_from_state, _ = block.step(x[:, :1], state)
    assert (y_from_state - block(x)[:, :1]).abs().max() > 1e-6  # the shifted token matters
    assert_decode_matches_forward(block, D, T=6)


def test_rwkv6_init_decays_and_bonus_follow_the_official_ramp():
    block = RWKV6TimeMix(64, head_dim=16)
    w0 = block.decay_up.bias.detach()
    assert w0[0].item() == pytest.approx(-6.0) and w0[-1].item() == pytest.approx(-1.0)
    log_decay = block.log_decay(torch.randn(1, 4, 64))
    torch.testing.assert_close(log_decay, -torch.exp(w0).expand_as(log_decay))  # zero LoRA down-projection at init
    u = block.bonus.detach().flatten()
    assert u[0].item() == pytest.approx(0.5) and u[-1].item() == pytest.approx(0.1 * ((64 % 3) - 1))


def test_rwkv7_decay_is_bounded_by_exp_minus_exp_minus_half():
    torch.manual_seed(0)
    block = RWKV7TimeMix(D, head_dim=8)
    with torch.no_grad():
        block.decay_down.weight.normal_(std=3.0)
        block.decay_up.weight.normal_(std=3.0)
    log_decay = block.log_decay(torch.randn(2, 50, D, dtype=torch.float64).float()).double()
    assert log_decay.min() >= -torch.exp(torch.tensor(-0.5, dtype=torch.float64)) - 1e-6
    assert log_decay.max() <= 0 and log_decay.min() < -0.5  # the full range is reached


def _value_residual_pair():
    torch.manual_seed(0)
    first, later = RWKV7TimeMix(D, layer_idx=0, head_dim=8).double(), _open_outputs(RWKV7TimeMix(D, layer_idx=2, head_dim=8).double())
    with torch.no_grad():
        later.v_down.weight.normal_(std=0.3)
    assert first.v_up is None and later.v_up is not None  # the first layer has no residual to take
    return first, later


@pytest.mark.parametrize("v0", [-50.0, 0.0, 50.0])
def test_rwkv7_value_residual_mixes_in_the_first_layers_values(v0):
    first, later = _value_residual_pair()
    x0, x2 = torch.randn(2, 2, 9, D, dtype=torch.float64)
    with torch.no_grad():
        later.v_up.bias.fill_(v0)
    shared = {}
    first(x0, shared)
    out = later(x2, shared)
    # other v_first: matters unless the gate is shut (v0 = -50: sigmoid 0, v = the layer's own v)
    other = dict(rwkv7_v_first=shared["rwkv7_v_first"] + 1.0)
    assert torch.allclose(later(x2, other), out) == (v0 < 0)
    # the layer's own value projection: matters unless the gate is wide open (v = v_first)
    with torch.no_grad():
        later.v_proj.weight.mul_(2)
    assert torch.allclose(later(x2, shared), out) == (v0 > 0)
    assert not torch.allclose(later(x2), out)  # on its own (no shared dict), no residual at all


def test_rwkv7_value_residual_decodes_like_the_forward_through_the_model():
    from arch.lm import LanguageModel

    blocks = {
        "rwkv7": {"_target_": "arch.blocks.rwkv7.RWKV7TimeMix", "head_dim": 8, "value_rank": 4},
        "channel": {"_target_": "arch.blocks.rwkv6.RWKV6ChannelMix", "receptance": False},
    }
    torch.manual_seed(0)
    config = dict(d_model=D, n_layers=4, vocab_size=40, layers=["rwkv7", "channel"], mlp=None, blocks=blocks)
    model = LanguageModel.from_config(config).double()
    for p in model.parameters():  # leave the zero-initialised low-rank factors: make every path active
        with torch.no_grad():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 40, (2, 11))
    assert_model_decode_matches_forward(model, ids)
    model(ids).sum().backward()
    assert model.layers[2].mixer.v_up.weight.grad.abs().sum() > 0


def _rwkv_model(time_mix: str, n_rwkv_layers: int, d_model: int = D, **time_hp):
    """A [time mix, channel mix] RWKV LM of ``n_rwkv_layers`` RWKV layers with layer_span 2, as the presets."""
    from arch.lm import LanguageModel

    v7 = time_mix == "rwkv7"
    blocks = {
        "time": {"_target_": f"arch.blocks.{time_mix}.{'RWKV7TimeMix' if v7 else 'RWKV6TimeMix'}", "layer_span": 2, **time_hp},
        "channel": {
            "_target_": "arch.blocks.rwkv6.RWKV6ChannelMix",
            "layer_span": 2,
            **({"receptance": False, "expansion": 4.0, "depth_power": 4} if v7 else {}),
        },
    }
    config = dict(d_model=d_model, n_layers=2 * n_rwkv_layers, vocab_size=40, layers=["time", "channel"], mlp=None, blocks=blocks)
    return LanguageModel.from_config(config)


def _ddd(C: int) -> torch.Tensor:
    return torch.tensor([i / C for i in range(C)])


def test_rwkv_init_interpolates_by_the_rwkv_layer_when_time_and_channel_mixes_alternate():
    """layer_span 2: model layers 2l and 2l + 1 are RWKV layer l of n_layers / 2 (x060's ratios)."""
    model, L = _rwkv_model("rwkv6", 3, head_dim=8), 3
    n = torch.tensor([i / (D - 1) for i in range(D)])
    for layer in range(L):
        block, channel = model.layers[2 * layer].mixer, model.layers[2 * layer + 1].mixer
        up, down = layer / (L - 1), 1 - layer / L  # ratio_0_to_1, ratio_1_to_almost0 of the RWKV layer
        torch.testing.assert_close(block.decay_up.bias.detach(), -6 + 5 * n ** (0.7 + 1.3 * up))  # time_decay
        torch.testing.assert_close(block.mu.detach()[1], 1 - _ddd(D) ** down)  # mu_k
        torch.testing.assert_close(block.mu.detach()[2], 1 - (_ddd(D) ** down + 0.3 * up))  # mu_v
        torch.testing.assert_close(channel.mu_k.detach(), 1 - _ddd(D) ** down)
        torch.testing.assert_close(channel.mu_r.detach(), 1 - _ddd(D) ** down)
        torch.testing.assert_close(block.group_norm.weight.detach(), torch.full((D,), ((1 + layer) / L) ** 0.7))
    # a block built on its own knows no depth: ratio 1/2 for both, ln_x weight 1
    alone = RWKV6TimeMix(D, head_dim=8)
    torch.testing.assert_close(alone.decay_up.bias.detach(), -6 + 5 * n ** (0.7 + 1.3 * 0.5))
    assert (alone.group_norm.weight == 1).all()


def _x070_reference(C: int, N: int, layer: int, L: int) -> dict[str, torch.Tensor]:
    """RWKV_Tmix_x070's constants for RWKV layer ``layer`` of L, channel by channel as the reference writes them."""
    r0, r1 = layer / (L - 1), 1 - layer / L
    w0, a0, v0, k_k = (torch.zeros(C) for _ in range(4))
    for n in range(C):
        linear = n / (C - 1) - 0.5
        zigzag = ((n % N) - ((N - 1) / 2)) / ((N - 1) / 2)
        zigzag = zigzag * abs(zigzag)
        w0[n] = -6 + 6 * (n / (C - 1)) ** (1 + 1 * r0**0.3) + 0.5 + zigzag * 2.5
        a0[n] = -0.19 + zigzag * 0.3 + linear * 0.4
        v0[n] = 0.73 - linear * 0.4
        k_k[n] = 0.71 - linear * 0.1
    mu = torch.stack([1 - _ddd(C) ** (p * r1) for p in (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)])  # r, w, k, v, a, g
    return dict(w0=w0, a0=a0, v0=v0, k_k=k_k, mu=mu, ln_x=torch.full((C,), ((1 + layer) / L) ** 0.7), cmix_mu_k=1 - _ddd(C) ** (r1**4))


@pytest.mark.parametrize("layer", [0, 2, 4])  # first, middle and last of 5 RWKV layers
def test_rwkv7_special_parameters_follow_x070(layer):
    C, N, L = 128, 32, 5
    model = _rwkv_model("rwkv7", L, d_model=C, head_dim=N)
    block, channel, ref = model.layers[2 * layer].mixer, model.layers[2 * layer + 1].mixer, _x070_reference(C, N, layer, L)
    torch.testing.assert_close(block.decay_up.bias.detach(), ref["w0"])
    torch.testing.assert_close(block.a_up.bias.detach(), ref["a0"])
    torch.testing.assert_close(block.k_k.detach(), ref["k_k"])
    torch.testing.assert_close(block.k_a.detach(), torch.full((C,), 1.02))
    torch.testing.assert_close(block.r_k.detach(), torch.full((C // N, N), -0.04))
    torch.testing.assert_close(block.mu.detach(), ref["mu"])
    torch.testing.assert_close(block.group_norm.weight.detach(), ref["ln_x"])
    torch.testing.assert_close(channel.mu_k.detach(), ref["cmix_mu_k"])  # ratio_1_to_almost0 ** 4
    if layer > 0:
        torch.testing.assert_close(block.v_up.bias.detach(), ref["v0"])
    else:
        assert block.v_up is None  # layer 0 supplies v_first and takes no residual


def test_rwkv7_lora_ranks_follow_the_reference_formula():
    def rank(C, f):
        return max(32, int(round((f * (C**0.5)) / 32) * 32))

    for C in (128, 768):
        block = RWKV7TimeMix(C, layer_idx=1, head_dim=64)
        got = [block.decay_up.in_features, block.a_up.in_features, block.v_up.in_features, block.g_up.in_features]
        assert got == [rank(C, 2.5), rank(C, 2.5), rank(C, 1.7), rank(C, 5)]
    block = RWKV7TimeMix(128, layer_idx=1, head_dim=64)
    assert [block.decay_up.in_features, block.a_up.in_features, block.v_up.in_features, block.g_up.in_features] == [32, 32, 32, 64]


def _assert_orthogonal(weight: torch.Tensor, gain: float) -> None:
    w = weight.detach().double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("time_mix", ["rwkv6", "rwkv7"])
def test_rwkv_projections_follow_generate_init_weight_inside_the_language_model(time_mix):
    """The LM's own init (N(0, std), out_proj scaled) runs first; the block's init_weights then wins."""
    model = _rwkv_model(time_mix, 2, d_model=64, head_dim=16)
    block, channel = model.layers[2].mixer, model.layers[3].mixer
    gains = {"r_proj": 1.0, "k_proj": 0.1, "v_proj": 1.0} | ({"g_proj": 0.1} if time_mix == "rwkv6" else {})
    for name, gain in gains.items():
        _assert_orthogonal(getattr(block, name).weight, gain)
    assert not block.out_proj.weight.any()  # att.output = 0
    _assert_orthogonal(channel.k_proj.weight, 1.0)  # ffn.key
    assert not channel.out_proj.weight.any()  # ffn.value = 0
    if time_mix == "rwkv6":
        assert not channel.r_proj.weight.any()  # ffn.receptance = 0
    lora = [(block.decay_down, block.decay_up)] + ([(block.v_down, block.v_up)] if time_mix == "rwkv7" else [])
    for down, up in lora:
        assert not down.weight.any()
        if time_mix == "rwkv7":
            _assert_orthogonal(up.weight, 0.1)  # w2, v2: ortho_init(0.1)
        else:
            assert up.weight.abs().max() <= 0.01  # time_decay_w2 ~ U(-0.01, 0.01)


def _exempt(block: torch.nn.Module) -> set[str]:
    return {name for name, p in block.named_parameters() if getattr(p, "_no_weight_decay", False)}


def test_rwkv_weight_decay_applies_only_to_the_projection_matrices():
    """The reference decays ">= 2-D .weight" of its Linears; mixes, LoRA factors (w1/w2...), w0/a0/v0,
    u, k_k, k_a, r_k and ln_x are plain parameters there and get weight decay 0."""
    v6 = RWKV6TimeMix(D, head_dim=8)
    decayed = {f"{p}.weight" for p in ("r_proj", "k_proj", "v_proj", "g_proj", "out_proj")}
    assert {n for n, _ in v6.named_parameters()} - _exempt(v6) == decayed
    assert {"mu", "mu_x", "mix_up", "mix_down.weight", "decay_down.weight", "decay_up.weight", "bonus", "group_norm.weight"} <= _exempt(v6)
    v7 = RWKV7TimeMix(D, layer_idx=1, head_dim=8)
    assert {n for n, _ in v7.named_parameters()} - _exempt(v7) == {f"{p}.weight" for p in ("r_proj", "k_proj", "v_proj", "out_proj")}
    assert {"mu", "k_k", "k_a", "r_k", "v_down.weight", "v_up.weight", "v_up.bias", "g_up.weight", "a_up.bias"} <= _exempt(v7)
    for receptance in (True, False):
        channel = RWKV6ChannelMix(D, receptance=receptance)
        assert {n for n, _ in channel.named_parameters()} - _exempt(channel) == {"k_proj.weight", "out_proj.weight"} | (
            {"r_proj.weight"} if receptance else set()
        )


def test_rwkv_presets_span_two_model_layers_per_rwkv_layer():
    from training.compose import compose

    for preset in ("rwkv6", "rwkv7"):
        model = compose(overrides=[f"model={preset}"])["model"]
        assert all(block.get("layer_span") == 2 for block in model["blocks"].values()), preset
    assert math.isclose(compose(overrides=["model=rwkv7"])["model"]["blocks"]["rwkv7_channel"]["depth_power"], 4)
