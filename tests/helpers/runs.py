"""Composed configs and run directories for tests: a tiny CPU recipe, the composer, event scalars."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

import train  # noqa: F401  (registers the resolvers; replaced by the compose module in the redesign)

CONF = str(Path(__file__).resolve().parents[2] / "conf")

TINY = [
    "trainer=cpu",
    "model.d_model=32",
    "model.n_layers=2",
    "model.blocks.attention.n_heads=2",
    "data.max_files=40",
    "data.val_fraction=0.2",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=false",
    "schedule.warmup_steps=2",
]


def compose_config(overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}
