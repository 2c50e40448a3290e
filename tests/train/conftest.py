from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import train as train_module

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


@pytest.fixture
def run_tiny(tmp_path_factory):
    """Train a tiny model in-process: run_tiny(run_dir, *overrides) -> metrics."""
    cache = tmp_path_factory.getbasetemp() / "cache"

    def run(run_dir: Path, *overrides: str) -> dict:
        cfg = compose_config(TINY + [f"paths.cache={cache}", *overrides])
        return train_module.train(cfg, run_dir)

    return run


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}
