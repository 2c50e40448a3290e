"""Composed configs and run directories for tests: a tiny CPU recipe, the composer, event scalars."""

from __future__ import annotations

from pathlib import Path

from training.compose import compose

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
    "callbacks.progress=null",
    "schedule.warmup_steps=2",
]


def compose_config(overrides):
    return compose(overrides)


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}
