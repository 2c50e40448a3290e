"""arch.flops agrees with PyTorch's FlopCounterMode on what the pure-PyTorch path computes."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from arch.blocks.attention import Attention
from arch.flops import _mean_context, forward_flops_per_token, training_flops_per_token
from arch.lm import LanguageModel

BLOCKS = {"attention": {"_target_": "arch.blocks.attention.Attention", "n_heads": 4}, "swiglu": {"_target_": "arch.blocks.mlp.SwiGLU"}}


def counted(module, x) -> dict[str, int]:
    # SDPA's math backend runs as visible bmm's; the counter does not see the fused CPU kernel
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(x)
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("window", [None, 16])
def test_transformer_forward_flops_match_the_counter(window):
    blocks = {**BLOCKS, "attention": {**BLOCKS["attention"], "window": window}}
    model = LanguageModel.from_config({"d_model": 64, "n_layers": 2, "vocab_size": 100, "blocks": blocks})
    b, t = 2, 128
    ops = counted(model, torch.randint(0, 100, (b, t)))
    matmuls = ops["aten.mm"]  # every Linear, the head included
    sdpa = ops["aten.bmm"]  # q k^T and p v
    # The counter charges attention for the full T x T score matrix (it does not see the causal or
    # window mask); a causal query only attends to its visible keys, which is what arch.flops counts.
    visible = _mean_context(t, window) / t
    expected = matmuls + sdpa * visible
    assert forward_flops_per_token(model, t) * b * t == pytest.approx(expected, rel=0.1)


def test_attention_flops_grow_quadratically_and_windowed_linearly():
    full, windowed = Attention(64, 0, n_heads=4), Attention(64, 0, n_heads=4, window=64)
    per_token = [forward_flops_per_token(full, t) for t in (1024, 2048, 4096)]
    linear_part = forward_flops_per_token(torch.nn.Sequential(full.q_proj, full.kv_proj, full.out_proj), 1)
    # per-token cost grows linearly in T (total quadratic) for full attention ...
    assert (per_token[2] - linear_part) / (per_token[1] - linear_part) == pytest.approx(2, rel=0.01)
    # ... and is constant once T exceeds the window
    assert forward_flops_per_token(windowed, 4096) == pytest.approx(forward_flops_per_token(windowed, 8192), rel=0.01)


def test_training_counts_backward_as_twice_the_forward():
    model = LanguageModel.from_config({"d_model": 32, "n_layers": 1, "vocab_size": 50, "blocks": BLOCKS})
    assert training_flops_per_token(model, 64) == 3 * forward_flops_per_token(model, 64)


def test_cli_prints_a_row_per_layer_and_totals(capsys):
    from eval.flops import main

    main(["model=samba", "--seq-len", "512"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 4 + 2  # header, 4 layers, head, total
    assert "Mamba" in out and "Attention" in out and "Training FLOPs/token" in out
