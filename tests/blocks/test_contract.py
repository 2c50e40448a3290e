"""The block contract, checked for every sequence mixer in conf/block/ (a new block file is picked up
without touching this test): causality, step decoding equals forward, and an honest state_size."""


import pytest
import torch
from omegaconf import OmegaConf

from arch.config import locate
from tests.helpers.properties import assert_causal, assert_decode_matches_forward, build_block
from training.compose import CONF_DIR

CONF = CONF_DIR / "block"
D_MODEL = 64


def _spec(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=True)


MIXERS = sorted(p.stem for p in CONF.glob("*.yaml") if hasattr(locate(_spec(p.stem)["_target_"], p.stem), "step"))
CHANNEL_MIXERS = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem not in MIXERS)


def build(name: str, layer_idx: int = 1) -> torch.nn.Module:
    return build_block(name, D_MODEL, layer_idx)


def test_the_zoo_has_mixers():
    assert "attention" in MIXERS and "swiglu" in CHANNEL_MIXERS


@pytest.mark.parametrize("name", MIXERS)
def test_block_is_causal(name):
    assert_causal(build(name), D_MODEL)


@pytest.mark.parametrize("name", MIXERS)
def test_block_decode_matches_forward_and_state_size_is_honest(name):
    assert_decode_matches_forward(build(name), D_MODEL)


@pytest.mark.parametrize("name", CHANNEL_MIXERS)
def test_channel_mixer_is_position_wise(name):
    block = build(name)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    full = block(x)
    torch.testing.assert_close(torch.cat([block(x[:, t : t + 1]) for t in range(9)], 1), full)


def test_the_name_table_in_arch_blocks_lists_every_block_config_with_its_file_and_class():
    import arch.blocks

    rows = {}
    for line in arch.blocks.__doc__.splitlines():
        cells = line.split()
        if len(cells) >= 3 and cells[1].endswith(".py") and (CONF / f"{cells[0]}.yaml").exists():
            rows[cells[0]] = f"arch.blocks.{cells[1][:-3]}.{cells[2]}"
    assert rows == {p.stem: _spec(p.stem)["_target_"] for p in CONF.glob("*.yaml")}
