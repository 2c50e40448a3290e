"""Each speed knob alone keeps a short deterministic CPU run's losses within tolerance of the default
run: the unchunked loss, activation checkpointing, torch.compile (model and layers), and gradient
accumulation (the same tokens per optimizer step in two micro-batches)."""

import pytest

from tests.helpers.runs import scalars

COMMON = ["trainer.max_steps=6", "trainer.val_check_interval=6"]


def losses(run_dir):
    values = scalars(run_dir, "train/loss")
    return [values[k] for k in sorted(values)]


@pytest.mark.parametrize(
    "knob,rel",
    [
        ("model.loss_chunk_size=null", 1e-5),
        ("model.activation_checkpointing=true", 1e-6),
        pytest.param("compile=layers", 1e-4, marks=pytest.mark.slow),
    ],
)
def test_a_knob_keeps_the_losses(tmp_path, run_tiny, knob, rel):
    base = run_tiny(tmp_path / "base", *COMMON)
    tuned = run_tiny(tmp_path / "tuned", *COMMON, knob)
    assert losses(tmp_path / "tuned") == pytest.approx(losses(tmp_path / "base"), rel=rel)
    assert tuned["val/loss"] == pytest.approx(base["val/loss"], rel=rel)


def test_accumulation_of_two_half_batches_matches_one_batch(tmp_path, run_tiny):
    base = run_tiny(tmp_path / "base", *COMMON)
    accumulated = run_tiny(tmp_path / "acc", *COMMON, "data.batch_size=2", "data.val_batches=4", "trainer.accumulate_grad_batches=2")
    # the same 4 sequences per optimizer step, in two micro-batches: the same updates up to rounding
    # (validation over the same 8 windows: val_batches x batch_size)
    assert accumulated["steps"] == base["steps"] == 6 and accumulated["tokens"] == base["tokens"]
    assert accumulated["val/loss"] == pytest.approx(base["val/loss"], rel=1e-4)
