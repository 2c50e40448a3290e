"""arch.flops (the FLOP counter) for the recurrent zoo (Mamba, RG-LRU, H3, RWKV-6/7): the matmul-like part of each block's
count equals what FlopCounterMode sees on the pure-PyTorch forward; the elementwise part (scan updates,
exponentials, gates: invisible to the counter) is `ELEMENTWISE_FLOPS`, compared only for its sign."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arch.blocks.griffin import RGLRUBlock
from arch.blocks.h3 import H3
from arch.blocks.mamba import Mamba
from arch.blocks.rwkv6 import RWKV6ChannelMix, RWKV6TimeMix
from arch.blocks.rwkv7 import RWKV7TimeMix
from arch.flops import ELEMENTWISE_FLOPS, forward_flops_per_token
from arch.lm import LanguageModel

D = 64
BLOCKS = {
    "mamba": lambda: Mamba(D, backend="torch"),
    "rglru": lambda: RGLRUBlock(D, n_heads=4, backend="torch"),
    "h3": lambda: H3(D, backend="torch"),
    "h3_multihead": lambda: H3(D, head_dim=4, backend="torch"),
    "rwkv6": lambda: RWKV6TimeMix(D, head_dim=16, mix_rank=16, decay_rank=32, backend="torch"),
    "rwkv6_channel": lambda: RWKV6ChannelMix(D),
    "rwkv7": lambda: RWKV7TimeMix(D, head_dim=16, decay_rank=32, a_rank=32, gate_rank=64),
    "rwkv7_channel": lambda: RWKV6ChannelMix(D, expansion=4.0, receptance=False),
}


def counter_flops(module, x) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def elementwise_per_token(module, seq_len) -> float:
    return sum(ELEMENTWISE_FLOPS[type(m)](m, seq_len) for m in module.modules() if type(m) in ELEMENTWISE_FLOPS)


def assert_block_flops_visible(make_block, seq_len: int, b: int = 2) -> None:
    """The matmul-like part of arch.flops' count equals what FlopCounterMode sees (10%); the rest is > 0."""
    torch.manual_seed(0)
    block = make_block()
    visible = (forward_flops_per_token(block, seq_len) - elementwise_per_token(block, seq_len)) * b * seq_len
    assert visible == pytest.approx(counter_flops(block, torch.randn(b, seq_len, D)), rel=0.1)
    assert elementwise_per_token(block, seq_len) > 0


def assert_model_flops_visible(layers: list[str], blocks: dict, b: int = 2, t: int = 96) -> None:
    """The same check for a 4-layer LanguageModel built from ``layers`` (with SwiGLU MLPs)."""
    model = LanguageModel.from_config({"d_model": D, "n_layers": 4, "vocab_size": 100, "layers": layers, "blocks": blocks})
    visible = (forward_flops_per_token(model, t) - elementwise_per_token(model, t)) * b * t
    assert visible == pytest.approx(counter_flops(model, torch.randint(0, 100, (b, t))), rel=0.1)


@pytest.mark.parametrize("seq_len", [64, 100])  # 100: chunked ops pad to whole chunks
@pytest.mark.parametrize("name", BLOCKS)
def test_visible_block_flops_match_the_counter(name, seq_len):
    assert_block_flops_visible(BLOCKS[name], seq_len)


@pytest.mark.parametrize("preset", [["mamba", "rglru"], ["rwkv6", "rwkv6_channel"], ["h3", "rwkv7"]])
def test_visible_model_flops_match_the_counter(preset):
    targets = {
        "mamba": {"_target_": "arch.blocks.mamba.Mamba", "backend": "torch"},
        "rglru": {"_target_": "arch.blocks.griffin.RGLRUBlock"},
        "rwkv6": {"_target_": "arch.blocks.rwkv6.RWKV6TimeMix", "head_dim": 16},
        "rwkv6_channel": {"_target_": "arch.blocks.rwkv6.RWKV6ChannelMix"},
        "h3": {"_target_": "arch.blocks.h3.H3"},
        "rwkv7": {"_target_": "arch.blocks.rwkv7.RWKV7TimeMix", "head_dim": 16},
        "swiglu": {"_target_": "arch.blocks.mlp.SwiGLU"},
    }
    assert_model_flops_visible(preset, targets)


def test_mamba_scan_is_about_twelve_d_inner_n_per_token():
    block = Mamba(D, d_state=16)
    linears = torch.nn.Sequential(block.in_proj, block.x_proj, block.dt_proj, block.out_proj)
    per_token = forward_flops_per_token(block, 128) - forward_flops_per_token(linears, 1)
    # two scan passes (10 d N) + the C readout (2 d N), conv and gates: O(d N), independent of T
    assert per_token == pytest.approx(12 * block.d_inner * 16, rel=0.2)
    assert forward_flops_per_token(block, 4096) == forward_flops_per_token(block, 128)
