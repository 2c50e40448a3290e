"""GLA block: gate range and normaliser, equality with a hand-written composition on the token-by-token
oracle, the one-token recurrence used by `step`, and mixing with attention through `layers`."""


import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from arch.blocks.attention import Attention
from arch.blocks.gla import GLA
from arch.lm import LanguageModel
from arch.ops.gla import gated_linear_attention_naive
from training.compose import compose

D = 64


def test_gla_gate_is_logsigmoid_over_16_so_decays_lie_in_0_1_close_to_1():
    torch.manual_seed(0)
    block = GLA(D).double()
    assert (block.head_k, block.head_v, block.n_heads) == (8, 16, 4)  # expand_k 0.5, expand_v 1
    x = 3 * torch.randn(2, 50, D, dtype=torch.float64)
    g = block.log_decay(x)
    assert g.shape == (2, 50, 4, 8) and (g < 0).all()
    # alpha = sigmoid(W2 W1 x + b)^(1/16): in (0, 1), and never below sigmoid(logit)
    torch.testing.assert_close(torch.exp(16 * g).flatten(-2), torch.sigmoid(block.gk_proj(x)))
    # the normaliser keeps decays near 1: even a logit of -5 decays by only sigmoid(-5)^(1/16) ~ 0.73
    assert torch.exp(g).min() > torch.sigmoid(block.gk_proj(x)).min()
    with torch.no_grad():
        block.gk_proj[1].weight.zero_(), block.gk_proj[1].bias.zero_()
    torch.testing.assert_close(block.log_decay(x).exp(), torch.full_like(g, 0.5 ** (1 / 16)))


def test_gla_forward_equals_hand_written_composition_of_the_naive_op():
    torch.manual_seed(0)
    block = GLA(D, n_heads=2).double()
    x = torch.randn(2, 70, D, dtype=torch.float64)
    q, k = (p(x).unflatten(-1, (2, 16)) for p in (block.q_proj, block.k_proj))
    v = block.v_proj(x).unflatten(-1, (2, 32))
    g = F.logsigmoid(block.gk_proj(x)).unflatten(-1, (2, 16)) / 16
    o, _ = gated_linear_attention_naive(q, k, v, g, scale=16**-0.5)
    o = F.group_norm(o.flatten(0, 1).flatten(1), 2, block.group_norm.weight, block.group_norm.bias, 1e-5).view(2, 70, D)
    torch.testing.assert_close(block(x), block.out_proj(o * F.silu(block.g_proj(x))), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("preset", ["linear_attention", "based", "gla", "retnet", "hgrn2", "mamba2", "base_conv"])
def test_each_preset_mixes_with_attention_through_the_layer_pattern(preset):
    # the recipe documented in conf/model/gla.yaml
    cfg = compose([f"model={preset}", "+block@model.blocks.attention=attention"])
    values = OmegaConf.to_container(cfg, resolve=True)["model"]
    mixer = values["layers"][-1] if preset == "based" else values["layers"][0]
    model = LanguageModel.from_config({**values, "layers": [mixer, mixer, "attention"], "n_layers": 3}, vocab_size=50)
    kinds = [type(layer.mixer) for layer in model.layers]
    assert kinds[0] is kinds[1] is not Attention and kinds[2] is Attention
    ids = torch.randint(0, 50, (1, 16))
    assert torch.isfinite(model.loss(ids, ids))
