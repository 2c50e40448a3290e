"""Which parameters AdamW decays, for every model preset: matrices decay, except the embedding and
the parameters their reference code exempts, which blocks mark ``_no_weight_decay``
(`arch.blocks.init.no_weight_decay`); vectors (norms, biases, per-channel constants) never decay.
The table lists, per preset, the matrices (ndim >= 2) that are *not* decayed; every other matrix is.
Sources per block: docs/fidelity.md."""

import re

import pytest
from omegaconf import OmegaConf

from arch.lm import LanguageModel
from training.compose import CONF_DIR, compose
from training.task import split_weight_decay

MAMBA = {"layers.*.mixer.A_log"}  # mamba_ssm: A_log and D (D is a vector)
RWKV6 = {"layers.*.mixer." + n for n in ("bonus", "decay_down.weight", "decay_up.weight", "mix_down.weight", "mix_up", "mu")}
RWKV7 = {"layers.*.mixer." + n for n in ("mu", "r_k")} | {
    f"layers.*.mixer.{a}_{b}.weight" for a in ("a", "decay", "g", "v") for b in ("down", "up")
}  # RWKV: only the projections' 2-D ".weight" decay; LoRA factors are w1/w2-style parameters there
RGLRU = {"layers.*.mixer.conv_weight", "layers.*.mixer.gate_bias"}  # recurrentgemma: conv, gate biases, Lambda
H3 = {"layers.*.mixer." + n for n in ("A_imag", "B", "log_A_real", "shift_B")}  # H3's OptimModule.register(wd=0)
EXEMPT_MATRICES = {
    "bam": set(),  # MoA and MoE: every matrix decays, routers included
    "bam_dense": set(),
    "base_conv": set(),  # Zoology decays every parameter (the framework still exempts vectors)
    "based": set(),
    "gla": set(),
    "griffin": RGLRU,
    "h3": H3,
    "hawk": RGLRU,
    "hgrn2": {"layers.*.mixer.lower_bound_logits"},  # fla keeps the bound table out of weight decay
    "cope": set(),  # the position table decays (a matrix, as in the reference's optimiser)
    "deepseek": set(),  # MLA's norms are vectors
    "diff_transformer": {"layers.*.mixer.lambdas"},  # the [4, head_dim] lambda vectors
    "fox": set(),  # the forget gate's weight decays (a Linear), its bias does not (a vector)
    "gla_moe": set(),  # MoE: experts, router and shared expert all decay (Megatron, torchtitan)
    "jamba": MAMBA,
    "kv_shift": {"layers.*.mixer.kv_shift"},  # the [2, 2, heads] mixing weights are exempt
    "linear_attention": set(),
    "mamba": MAMBA,
    "mamba2": set(),  # its A_log, D, dt_bias are vectors (and marked)
    "minimax": set(),
    "moa": set(),
    "moe": set(),
    "moh": set(),
    "mta": {"layers.*.mixer.mta_kernel", "layers.*.mixer.mta_head_mix"},  # convolution and head mixing around the identity
    "retnet": set(),
    "rope_nope": set(),
    "rwkv6": RWKV6,
    "rwkv7": RWKV7,
    "samba": MAMBA,
    "selective": set(),
    "samba_moe": MAMBA,
    "transformer": set(),
}
PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def folded(name: str) -> str:
    return re.sub(r"layers\.\d+\.", "layers.*.", name)


def test_every_preset_has_a_row():
    assert sorted(EXEMPT_MATRICES) == PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_decayed_parameters_of_each_preset(preset):
    values = OmegaConf.to_container(compose([f"model={preset}"]), resolve=True)["model"]
    model = LanguageModel.from_config(values, vocab_size=64)
    decay, _ = split_weight_decay(model)
    decayed = {id(p) for p in decay}
    names = dict(model.named_parameters())
    assert all(p.ndim >= 2 for p in decay)  # vectors never decay
    assert id(model.embedding.weight) not in decayed
    exempt = {folded(n) for n, p in names.items() if p.ndim >= 2 and id(p) not in decayed} - {"embedding.weight"}
    listing = sorted({folded(n) for n, p in names.items() if id(p) in decayed})
    assert exempt == EXEMPT_MATRICES[preset], f"{preset} decays {listing}"
    assert listing, preset
