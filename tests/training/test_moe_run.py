"""A short MoE run: the auxiliary losses join the training loss and, with the expert load, reach
TensorBoard; the active parameter count is below the total."""

import pytest

from tests.helpers.runs import scalars


def test_moe_run_logs_aux_losses_expert_load_and_active_params(tmp_path, run_tiny):
    run_dir = tmp_path / "moe"
    run_tiny(run_dir, "model=moe", "model.blocks.moe.n_experts=4", "trainer.max_steps=3", "trainer.val_check_interval=3")
    for tag in ("train/moe_balance", "train/moe_z", "train/moe/load_max_over_mean/layer0", "train/moe/load/layer1/expert3"):
        values = scalars(run_dir, tag)
        assert sorted(values) == [1, 2, 3], tag
    assert all(v > 0 for v in scalars(run_dir, "train/moe_balance").values())
    assert all(1.0 <= v <= 4.0 for v in scalars(run_dir, "train/moe/load_max_over_mean/layer0").values())
    total, active = scalars(run_dir, "params/total")[0], scalars(run_dir, "params/active")[0]
    d, hidden = 32, 96  # SwiGLU hidden: 8/3 * 32 rounded to 32
    assert total - active == pytest.approx(2 * (4 - 2) * 3 * d * hidden)  # two layers, two unused experts each
