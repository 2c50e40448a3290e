import pytest
import torch

from arch.blocks.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix, token_shift
from arch.blocks.rwkv7 import RWKV7TimeMix
from tests.helpers.properties import assert_decode_matches_forward

D = 32


def test_token_shift_is_the_previous_token_and_the_state_before_the_first():
    x = torch.arange(6.0).view(1, 3, 2)
    torch.testing.assert_close(token_shift(x, None), torch.tensor([[[0.0, 0.0], [0.0, 1.0], [2.0, 3.0]]]))
    torch.testing.assert_close(token_shift(x, torch.tensor([[7.0, 8.0]]))[:, 0], torch.tensor([[7.0, 8.0]]))


@pytest.mark.parametrize("receptance", [True, False])
def test_channel_mix_reads_exactly_the_current_and_previous_token(receptance):
    torch.manual_seed(0)
    block = RWKV6ChannelMix(D, receptance=receptance).double()
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
    block = cls(D, head_dim=8).double()
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
    first, later = RWKV7TimeMix(D, layer_idx=0, head_dim=8).double(), RWKV7TimeMix(D, layer_idx=2, head_dim=8).double()
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
    full = model(ids)
    state, steps = model.init_state(2), []
    for t in range(11):
        logits, state = model.step(ids[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full)
    model(ids).sum().backward()
    assert model.layers[2].mixer.v_up.weight.grad.abs().sum() > 0


def test_rwkv_init_interpolates_by_depth_when_the_model_passes_n_layers():
    from arch.blocks.init import channel_ramp
    from arch.lm import LanguageModel

    blocks = {
        "rwkv6": {"_target_": "arch.blocks.rwkv6.RWKV6TimeMix", "head_dim": 8},
        "channel": {"_target_": "arch.blocks.rwkv6.RWKV6ChannelMix"},
    }
    model = LanguageModel.from_config(dict(d_model=D, n_layers=6, vocab_size=40, layers=["rwkv6", "channel"], mlp=None, blocks=blocks))
    n = torch.arange(D) / (D - 1)
    ramp = channel_ramp(D)
    for idx in (0, 4):
        block = model.layers[idx].mixer
        up, down = idx / 5, 1 - idx / 6  # ratio_0_to_1, ratio_1_to_almost0 of the official recipe
        torch.testing.assert_close(block.decay_up.bias.detach(), -6 + 5 * n ** (0.7 + 1.3 * up))
        torch.testing.assert_close(block.mu.detach()[1], 1 - ramp**down)  # mu_k
        torch.testing.assert_close(block.mu.detach()[2], 1 - ramp**down - 0.3 * up)  # mu_v
    channel = model.layers[5].mixer
    torch.testing.assert_close(channel.mu_k.detach(), 1 - ramp ** (1 - 5 / 6))
    # a block built on its own knows no depth: ratio 1/2 for both
    torch.testing.assert_close(RWKV6TimeMix(D, head_dim=8).decay_up.bias.detach(), -6 + 5 * n ** (0.7 + 1.3 * 0.5))
