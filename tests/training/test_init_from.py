"""init_from: a fresh run starts from another checkpoint's model weights (fresh optimizer and
schedule); a checkpoint that does not fit is refused before anything is written."""

import pytest
import torch

from arch.config import ConfigError


def _weights(path):
    return {k: v for k, v in torch.load(path, weights_only=False)["state_dict"].items() if k.startswith("model.")}


def test_a_run_starts_from_the_weights_of_another_runs_checkpoint(tmp_path, run_tiny):
    run_tiny(tmp_path / "parent", "trainer.max_steps=6", "trainer.val_check_interval=6")
    parent = tmp_path / "parent/checkpoints/last.ckpt"
    # a learning rate of 1e-12 leaves the weights where they started: the child's final weights are the parent's
    child = run_tiny(tmp_path / "child", "trainer.max_steps=1", "trainer.val_check_interval=1", "optim.lr=1e-12", f"init_from={parent}")
    a, b = _weights(parent), _weights(tmp_path / "child/checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-9)
    fresh = run_tiny(tmp_path / "fresh", "trainer.max_steps=1", "trainer.val_check_interval=1", "optim.lr=1e-12")
    assert child["val/loss"] < fresh["val/loss"] - 0.1  # the trained weights, not a new initialisation


@pytest.mark.parametrize(
    "case, expected",
    [("other_width", "does not fit the configured model"), ("missing", "does not exist"), ("corrupt", "cannot be read")],
)
def test_a_checkpoint_that_cannot_start_the_run_is_refused_before_anything_is_written(tmp_path, run_tiny, case, expected):
    source = tmp_path / "source.ckpt"
    if case == "other_width":
        run_tiny(tmp_path / "parent", "trainer.max_steps=1", "trainer.val_check_interval=1", "model.d_model=48")
        source = tmp_path / "parent/checkpoints/last.ckpt"
    elif case == "corrupt":
        source.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=expected) as err:
        run_tiny(tmp_path / "run", "trainer.max_steps=1", f"init_from={source}")
    if case == "other_width":
        assert "embedding.weight" in str(err.value)
    assert not (tmp_path / "run").exists()
