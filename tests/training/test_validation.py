"""Every input is checked before any work: a bad value stops the run with a `ConfigError` before
the corpus is tokenised (no cache entry appears) and before anything is written (no run
directory); the framework's callbacks are a mapping that a run can extend with its own."""

from pathlib import Path

import lightning.pytorch as pl
import pytest

from arch.config import ConfigError
from tests.helpers.runs import TINY, compose_config
from training.run import train

BAD = {
    "misspelt_block_key": (["+model.blocks.attention.n_head=2"], r"model\.blocks\.attention\.n_head.*Did you mean 'n_heads'"),
    "negative_width": (["model.d_model=-8"], r"model\.d_model' is -8, but it must be > 0"),
    "heads_do_not_divide": (["model.blocks.attention.n_kv_heads=3"], r"model\.blocks\.attention.*Attention.*multiple of n_kv_heads=3"),
    "zero_layers": (["model.n_layers=0"], r"model\.n_layers' is 0"),
    "negative_lr": (["optim.lr=-1e-3"], r"optim\.lr' is -0\.001, but it must be > 0"),
    "betas": (["optim.betas=[0.9,1.5]"], r"optim\.betas"),
    "fraction": (["schedule.min_lr_ratio=2"], r"schedule\.min_lr_ratio' is 2, but it must be >= 0 and <= 1"),
    "seq_len": (["data.seq_len=0"], r"data\.seq_len' is 0"),
    "val_fraction": (["data.val_fraction=1.5"], r"data\.val_fraction' is 1\.5, but it must be > 0 and < 1"),
    "missing_tokenizer": (["data.tokenizer=nowhere/tokenizer.json"], r"data\.tokenizer=.*does not exist"),
    "max_steps": (["trainer.max_steps=0"], r"trainer\.max_steps must be a positive int"),
    "unknown_trainer_key": (["+trainer.max_step=3"], r"trainer\.max_step.*Did you mean 'max_steps'"),
    "old_callback_key": (["+callbacks.checkpoint_every_n_steps=5"], r"now callbacks\.checkpoint\.every_n_steps"),
    "callback_value": (["callbacks.checkpoint.every_n_steps=-1"], r"callbacks\.checkpoint.*every_n_steps"),
    "required_callback_argument": (["+callback@callbacks.stop_after=stop_after_steps"], r"callbacks\.stop_after\.steps"),
    "budget": (["budget_flops=-5"], r"budget_flops' is -5"),
    "zero_size": (
        ["+block@model.blocks.mamba=mamba", "model.layers=[mamba]", "model.blocks.mamba.expand=0"],
        r"model\.blocks\.mamba' builds parameter layers\.0\.mixer\..* one of its sizes is 0",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_value_fails_before_tokenising_and_writing(case, tmp_path):
    overrides, message = BAD[case]
    cache, run_dir = tmp_path / "cache", tmp_path / "runs" / "run"
    cfg = compose_config([*TINY, f"paths.cache={cache}", *overrides])
    with pytest.raises(ConfigError, match=message):
        train(cfg, run_dir)
    assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))
    assert not run_dir.exists()


class Recorder(pl.Callback):
    """A user's own callback, named by its import path on the command line."""

    seen: list = []

    def __init__(self, tag: str = "x", run_dir: str = ""):
        self.tag, self.run_dir = tag, run_dir

    def on_train_batch_end(self, trainer, *args) -> None:
        Recorder.seen.append((self.tag, self.run_dir, trainer.global_step))


def test_a_user_callback_joins_the_framework_ones(run_tiny, tmp_path):
    Recorder.seen.clear()
    run_tiny(tmp_path, "trainer.max_steps=3", "trainer.val_check_interval=3",
             f"+callbacks.mine._target_={__name__}.Recorder", "+callbacks.mine.tag=hello")
    assert Recorder.seen == [("hello", str(tmp_path), s) for s in (1, 2, 3)]
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()  # the framework's checkpoint callback still ran


def test_a_non_callback_target_is_a_config_error(tmp_path):
    cfg = compose_config([*TINY, f"paths.cache={tmp_path}", "+callbacks.mine._target_=collections.OrderedDict"])
    with pytest.raises(ConfigError, match="not a lightning.pytorch.Callback"):
        train(cfg, Path(tmp_path) / "run")
