import pytest
import torch

from arch.blocks.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix, token_shift
from arch.blocks.rwkv7 import RWKV7TimeMix
from properties import assert_decode_matches_forward

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
