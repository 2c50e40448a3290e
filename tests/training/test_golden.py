"""The redesign keeps behaviour: three short CPU runs (the default transformer, MQAR, GLA) train
with per-step losses bit-identical to those recorded before the glue was moved into `training/`
(tests/training/golden_losses.json, one intra-op thread as the suite uses). The MQAR run was
re-recorded once since, when a deliberate fix changed its initialisation (its ``note`` says which);
any other change to these numbers is a change of behaviour to explain."""

import json
from pathlib import Path

import pytest

from tests.helpers.runs import compose_config, scalars
from training.run import train

GOLDEN = json.loads((Path(__file__).with_name("golden_losses.json")).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_per_step_losses_are_bit_identical_to_the_recorded_ones(name, tmp_path):
    run = GOLDEN[name]
    cfg = compose_config([*run["overrides"], "callbacks.progress=null", f"paths.runs={tmp_path / 'runs'}"])
    metrics = train(cfg, tmp_path / name)
    losses = scalars(tmp_path / name, "train/loss")
    assert [losses[k] for k in sorted(losses)] == run["losses"]
    assert metrics["val/loss"] == pytest.approx(run["val_loss"], rel=1e-6)
